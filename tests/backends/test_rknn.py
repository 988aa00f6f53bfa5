"""The rknn backend against rknnlite: the stand-in here, the real one on a board.

Tests marked `rknn_hw` run on whichever rknnlite tests.support.rknn_models chose
(the real one with AISRV_TEST_REAL_RKNN=1); the others check the backend's own
logic (core masks, return codes, batch padding) on the stand-in everywhere.
"""

import importlib
import logging

import numpy as np
import pytest

from aiserving import backends
from aiserving.errors import BundleError, ConfigError
from tests.support import rknn_models as rm

# Imported after rknn_models, which decides which rknnlite it finds.
rknn_backend = importlib.import_module("aiserving.backends.rknn")

STANDIN = rm.standin_class()


def backend(**settings):
    return backends.create_backend("rknn", {"be.rknnpy.target": "rk3588",
                                            "be.rknnpy.core_mask": "auto", **settings})


def recording(base, journal, **fail):
    """An RKNNLite that logs every call into `journal`; `fail` forces return values."""

    class Recording(base):
        def load_rknn(self, *args, **kwargs):
            journal.append(("load_rknn", args, kwargs))
            return fail["load_rknn"] if "load_rknn" in fail else super().load_rknn(*args, **kwargs)

        def init_runtime(self, *args, **kwargs):
            journal.append(("init_runtime", args, kwargs))
            if "init_runtime" in fail:
                return fail["init_runtime"]
            return super().init_runtime(*args, **kwargs)

        def inference(self, *args, **kwargs):
            journal.append(("inference", args, {k: ([np.shape(i) for i in v] if k == "inputs"
                                                    else v) for k, v in kwargs.items()}))
            if "inference" in fail:
                return fail["inference"]
            return super().inference(*args, **kwargs)

        def release(self):
            journal.append(("release", (), {}))
            return super().release()

    return Recording


@pytest.fixture
def journal(monkeypatch):
    """Calls the backend makes to the rknnlite it imported (real or stand-in)."""
    calls = []
    monkeypatch.setattr(rknn_backend, "RKNNLite", recording(rknn_backend.RKNNLite, calls))
    return calls


@pytest.fixture
def standin(monkeypatch):
    """Make the backend use the stand-in (also on a board); returns a journal of its calls."""
    calls = []

    def use(**fail):
        monkeypatch.setattr(rknn_backend, "RKNNLite", recording(STANDIN, calls, **fail))
        return calls
    return use


def names(calls):
    return [c[0] for c in calls]


def test_rknn_is_supported_where_rknnlite_imports(monkeypatch):
    # probe only rknn, afresh: a child process imports the backend module with our sys.path
    monkeypatch.setattr(backends, "REGISTRY", {"rknn": backends.REGISTRY["rknn"]})
    monkeypatch.setattr(backends, "_probed", {})
    assert backends.supported_types() == ["rknn"]


@pytest.mark.rknn_hw
@pytest.mark.parametrize("n", [1, 5])
def test_items_run_one_by_one_and_equal_the_raw_runtime(storage, tmp_path, journal, n):
    m = rm.model(tmp_path, seed=2)
    b = backend(**({} if rm.REAL else {"be.rknnpy.core_mask": "0_1_2"}))
    b.load(rm.write_bundle(storage, m))
    items = m.items(n)
    outputs = b.predict([items])
    raw = rm.raw_outputs(m, items)
    assert len(outputs) == len(raw)
    for got, want in zip(outputs, raw):
        assert got.shape[0] == n
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if not rm.REAL:
        for got, want in zip(outputs, rm.numpy_outputs(m, items)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    b.unload()
    calls = -(-n // m.batch)
    assert names(journal) == ["load_rknn", "init_runtime"] + ["inference"] * calls + ["release"]
    (model_core,) = storage.glob("models/*/1/model_core")
    assert journal[0][1:] == ((str(model_core),), {})
    for _, args, kwargs in journal[2:-1]:
        assert args == () and kwargs == {"inputs": [(m.batch, *m.item_shape)]}


@pytest.mark.parametrize("target, mask, expected", [
    ("rk3588", "auto", {"core_mask": 0}), ("rk3588", "0", {"core_mask": 1}),
    ("rk3588", "2", {"core_mask": 4}), ("RK3588S", "0_1", {"core_mask": 3}),
    ("rk3588", "0_1_2", {"core_mask": 7}), ("rk3588", "all", {"core_mask": 0xffff}),
    ("rk3576", "1", {"core_mask": 2}), ("rk3576", "0_1", {"core_mask": 3}),
    ("rk3566", "auto", {}), ("rk3568", "auto", {}), ("rk3399pro", "auto", {}),
])
def test_core_mask_only_where_the_target_has_several_cores(storage, tmp_path, standin, target,
                                                           mask, expected):
    calls = standin()
    b = backend(**{"be.rknnpy.target": target, "be.rknnpy.core_mask": mask})
    b.load(rm.write_bundle(storage, rm.standin_model(tmp_path)))
    assert calls[1] == ("init_runtime", (), expected)
    assert b.device == ("npu" if not expected else f"npu:{mask}")


def test_core_mask_on_a_one_core_target_is_ignored_with_a_warning(storage, tmp_path, standin,
                                                                   caplog):
    calls = standin()
    with caplog.at_level(logging.WARNING):
        backend(**{"be.rknnpy.target": "rk3566", "be.rknnpy.core_mask": "1"}).load(
            rm.write_bundle(storage, rm.standin_model(tmp_path)))
    assert calls[1] == ("init_runtime", (), {})
    assert "NPU core mask 1 is ignored: be.rknnpy.target rk3566 has one NPU core" in caplog.text


@pytest.mark.parametrize("target, mask, device, message", [
    ("rk3576", "2", None, "NPU core mask '2' needs 3 NPU cores; be.rknnpy.target rk3576 has 2"),
    ("rk3576", "0_1_2", None, "needs 3 NPU cores"),
    ("rk3588", "auto", "npu:3", "NPU core mask '3' is not one of"),
])
def test_impossible_core_masks_refused(storage, tmp_path, standin, target, mask, device, message):
    calls = standin()
    with pytest.raises(ConfigError, match=message):
        backend(**{"be.rknnpy.target": target, "be.rknnpy.core_mask": mask}).load(
            rm.write_bundle(storage, rm.standin_model(tmp_path)), device)
    assert calls == []  # refused before the runtime was touched


def test_device_names_the_core_mask(storage, tmp_path, standin, caplog):
    calls = standin()
    b = backend()
    b.load(rm.write_bundle(storage, rm.standin_model(tmp_path)), "npu:0_1")
    assert calls[1] == ("init_runtime", (), {"core_mask": 3}) and b.device == "npu:0_1"
    with caplog.at_level(logging.WARNING):
        backend().load(rm.write_bundle(storage, rm.standin_model(tmp_path), version="2"), "cuda:0")
    assert "device 'cuda:0' is ignored" in caplog.text


@pytest.mark.parametrize("call, code", [("load_rknn", -1), ("init_runtime", -1),
                                        ("init_runtime", 3)])
def test_a_non_zero_return_code_is_a_clear_bundle_error(storage, tmp_path, standin, call, code):
    calls = standin(**{call: code})
    bundle = rm.write_bundle(storage, rm.standin_model(tmp_path))
    with pytest.raises(BundleError, match=rf"bundle {bundle.fullhash}: RKNNLite\.{call}\(.*\) "
                                          rf"returned {code}"):
        backend(**{"be.rknnpy.target": "rk3566"}).load(bundle)
    assert names(calls)[-1] == "release"  # nothing is left held


@pytest.mark.rknn_hw
def test_a_file_that_is_not_an_rknn_model_is_refused(storage, tmp_path, journal):
    bundle = rm.write_bundle(storage, rm.model(tmp_path), core=b"not a model")
    with pytest.raises(BundleError, match=r"RKNNLite\.init_runtime\(.*\) returned -1: model_core "
                                          "is not a .rknn model"):
        backend().load(bundle)
    assert names(journal) == ["load_rknn", "init_runtime", "release"]


def test_missing_model_core(storage, tmp_path):
    bundle = rm.write_bundle(storage, rm.standin_model(tmp_path))
    (bundle.path / "model_core").unlink()
    with pytest.raises(BundleError, match="file 'model_core' is missing"):
        backend().load(bundle)


@pytest.mark.rknn_hw
def test_inference_returning_none_is_a_clear_error(storage, tmp_path, journal):
    m = rm.model(tmp_path)
    b = backend()
    b.load(rm.write_bundle(storage, m))
    h, w, c = m.item_shape
    with pytest.raises(RuntimeError, match=r"RKNNLite\.inference returned None \(it failed; "
                                           r"rknn-toolkit-lite2 logged why\) for inputs "
                                           rf"\({m.batch}, {h // 2}, {w}, {c}\) uint8"):
        b.predict([np.zeros((2, h // 2, w, c), dtype=np.uint8)])  # half the model's input


def test_none_and_odd_answers_from_inference(storage, tmp_path, standin):
    standin(inference=None)
    b = backend()
    b.load(rm.write_bundle(storage, rm.standin_model(tmp_path)))
    with pytest.raises(RuntimeError, match="RKNNLite.inference returned None"):
        b.predict([np.zeros((1, 8, 8, 3), np.uint8)])
    standin(inference=-1)
    b = backend()
    b.load(rm.write_bundle(storage, rm.standin_model(tmp_path), version="2"))
    with pytest.raises(RuntimeError, match="RKNNLite.inference returned int, not a list"):
        b.predict([np.zeros((1, 8, 8, 3), np.uint8)])


def test_a_batch_n_model_runs_full_padded_calls(storage, tmp_path, standin):
    calls = standin()
    m = rm.standin_model(tmp_path, seed=7, batch=4)
    b = backend()
    b.load(rm.write_bundle(storage, m))  # modelext {"batch": 4}
    items = m.items(6, seed=3)
    outputs = b.predict([items])
    for got, want in zip(outputs, rm.numpy_outputs(m, items)):
        assert got.shape[0] == 6
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    shapes = [c[2]["inputs"] for c in calls if c[0] == "inference"]
    assert shapes == [[(4, 8, 8, 3)], [(4, 8, 8, 3)]]


def test_a_batch_n_model_without_modelext_batch_fails_clearly(storage, tmp_path, standin):
    standin()
    m = rm.standin_model(tmp_path, batch=4)
    b = backend()
    b.load(rm.write_bundle(storage, m, modelext={}))
    with pytest.raises(RuntimeError, match=r"a model built for batch 1 \(modelext 'batch'\)"):
        b.predict([m.items(4)])


def test_data_format_passed_through(storage, tmp_path, standin):
    calls = standin()
    m = rm.standin_model(tmp_path, seed=1)
    b = backend()
    b.load(rm.write_bundle(storage, m, modelext={"data_format": "NCHW"}))
    items = m.items(3)
    (logits, _) = b.predict([items.transpose(0, 3, 1, 2)])
    np.testing.assert_allclose(logits, rm.numpy_outputs(m, items)[0], rtol=1e-4, atol=1e-5)
    assert {c[2]["data_format"] for c in calls if c[0] == "inference"} == {"nchw"}


def test_shared_inputs_go_to_every_call_unchanged(storage, tmp_path, monkeypatch):
    seen = []

    class TwoInputs(STANDIN):
        def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None,
                      get_frame_id=False):
            seen.append([np.array(i) for i in inputs])
            return [inputs[0].reshape(1, -1)[:, :2].astype(np.float32) + inputs[1]]

    monkeypatch.setattr(rknn_backend, "RKNNLite", TwoInputs)
    m = rm.standin_model(tmp_path)
    b = backend()
    b.load(rm.write_bundle(storage, m, modelext={"tensors": {"input_type": ["1", "0"]}}))
    items = m.items(3)
    flag = np.float32(10.0)
    (out,) = b.predict([items, flag])
    assert len(seen) == 3 and all(s[1] == flag and s[0].shape == (1, 8, 8, 3) for s in seen)
    np.testing.assert_allclose(out, items.reshape(3, -1)[:, :2] + 10.0)


@pytest.mark.parametrize("ext, key", [({"batch": 0}, "'batch'"), ({"batch": "two"}, "'batch'"),
                                      ({"data_format": "nwhc"}, "'data_format'"),
                                      ({"data_format": ["nhwc", 1]}, "'data_format'")])
def test_bad_modelext(storage, tmp_path, ext, key):
    bundle = rm.write_bundle(storage, rm.standin_model(tmp_path), modelext=ext)
    with pytest.raises(BundleError, match=f"bundle {bundle.fullhash}: modelext {key}"):
        backend().load(bundle)


def test_float64_feeds_are_cast(storage, tmp_path, monkeypatch):
    seen = []

    class Seeing(STANDIN):
        def inference(self, inputs, **kwargs):
            seen.append(inputs[0].dtype)
            return super().inference(inputs, **kwargs)

    monkeypatch.setattr(rknn_backend, "RKNNLite", Seeing)
    m = rm.standin_model(tmp_path)
    b = backend()
    b.load(rm.write_bundle(storage, m))
    items = m.items(2)
    (logits, _) = b.predict([items.astype(np.float64)])
    assert seen == [np.float32, np.float32]
    np.testing.assert_allclose(logits, rm.numpy_outputs(m, items)[0], rtol=1e-4, atol=1e-5)

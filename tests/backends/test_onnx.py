"""The ONNX Runtime backend against a plain onnxruntime session, on small real models."""

import logging

import numpy as np
import onnxruntime as ort
import pytest

from aiserving.backends import backend_class, create_backend
from aiserving.errors import BundleError
from tests.support.onnx_models import build_model, raw_outputs, write_bundle

IMAGE = (3, 16, 16)


def backend(bundle=None, device=None, **settings):
    b = create_backend("onnx", {"backend.threads": 1, "be.onnx.providers": [], **settings})
    if bundle is not None:
        b.load(bundle, device)
    return b


def batch(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, *IMAGE)).astype(dtype)


def assert_outputs(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def count_runs(monkeypatch, b):
    calls = []
    original = b._session.run
    monkeypatch.setattr(b._session, "run",
                        lambda names, feeds: (calls.append(len(next(iter(feeds.values())))),
                                              original(names, feeds))[1])
    return calls


def test_the_registry_finds_the_backend():
    from aiserving.backends import onnx

    assert backend_class("onnx") is onnx.OnnxBackend


def test_dynamic_batch_is_one_call(storage, monkeypatch):
    bundle = write_bundle(storage, "dynamic", seed=1)
    b = backend(bundle)
    assert b.device == "cpu" and b.input_ranks() == [4]
    assert b._session.get_session_options().intra_op_num_threads == 1
    assert b._session.get_session_options().inter_op_num_threads == 1
    runs = count_runs(monkeypatch, b)
    content = build_model("dynamic", 1)
    x = batch(4)
    # float64 feeds are cast to the model's tensor(float)
    assert_outputs(b.predict([x.astype(np.float64)]), raw_outputs(content, x))
    assert_outputs(b.predict([batch(8, 1)]), raw_outputs(content, batch(8, 1)))
    assert runs == [4, 8]
    b.unload()
    assert b._session is None


def test_fixed_batch_of_one_runs_item_by_item(storage, monkeypatch, caplog):
    bundle = write_bundle(storage, "fixed", seed=2)
    b = backend(bundle)
    runs = count_runs(monkeypatch, b)
    content = build_model("fixed", 2)
    with caplog.at_level(logging.INFO, logger="aiserving.backends.onnx"):
        for seed in range(2):
            x = batch(8, seed)
            out = b.predict([x])
            assert [o.shape for o in out] == [(8, 3), (8, 4)]
            assert_outputs(out, raw_outputs(content, x))
        assert_outputs(b.predict([batch(1, 5)]), raw_outputs(content, batch(1, 5)))
    assert runs == [1] * 17
    assert caplog.text.count("batches run item by item") == 1


def test_modelext_output_names_reorder_outputs(storage):
    bundle = write_bundle(storage, "dynamic", seed=3,
                          modelext={"tensors": {"input": ["image:0"],
                                                "output": ["features", "scores:0"]}})
    b = backend(bundle)
    x = batch(3)
    scores, features = raw_outputs(build_model("dynamic", 3), x)
    assert_outputs(b.predict([x]), [features, scores])


@pytest.mark.parametrize("key", ["input", "output"])
def test_wrong_modelext_names_are_refused(storage, key):
    bundle = write_bundle(storage, "dynamic", modelext={"tensors": {key: ["logits:0"]}})
    with pytest.raises(BundleError) as err:
        backend(bundle)
    message = err.value.message
    assert bundle.fullhash in message and f"tensors.{key}" in message and "'logits:0'" in message
    assert ("'image'" if key == "input" else "'scores', 'features'") in message


def test_garbage_empty_or_missing_model_core_is_a_bundle_error(storage):
    garbage = write_bundle(storage, "dynamic", model_core=b"\x08garbage" * 64)
    with pytest.raises(BundleError, match=f"bundle {garbage.fullhash}: model_core is not an "
                                          "ONNX model"):
        backend(garbage)
    empty = write_bundle(storage, "dynamic", model_core=b"", version="2")
    with pytest.raises(BundleError, match="model_core is empty"):
        backend(empty)
    (empty.path / "model_core").unlink()
    with pytest.raises(BundleError, match="'model_core' is missing"):
        backend(empty)


def test_a_provider_onnxruntime_lacks_is_skipped_with_a_warning(storage, caplog):
    bundle = write_bundle(storage, "dynamic", seed=4)
    with caplog.at_level(logging.WARNING, logger="aiserving.backends.onnx"):
        b = backend(bundle, **{"be.onnx.providers": ["NoSuchExecutionProvider",
                                                     "CPUExecutionProvider"]})
    assert "has no NoSuchExecutionProvider" in caplog.text
    assert b._session.get_providers() == ["CPUExecutionProvider"] and b.device == "cpu"
    x = batch(2)
    assert_outputs(b.predict([x]), raw_outputs(build_model("dynamic", 4), x))


def test_the_load_device_picks_cuda_or_forces_the_cpu(storage, caplog):
    bundle = write_bundle(storage, "dynamic", seed=5)
    forced = backend(bundle, "cpu", **{"be.onnx.providers": ["CUDAExecutionProvider",
                                                             "CPUExecutionProvider"]})
    assert forced._session.get_providers() == ["CPUExecutionProvider"]
    assert forced.device == "cpu"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiserving.backends.onnx"):
        gpu = backend(bundle, "cuda:0")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert gpu.device == "cuda:0"
        assert gpu._session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        assert gpu.device == "cpu"
        assert "has no CUDAExecutionProvider" in caplog.text


@pytest.mark.parametrize("batch_axis", ["N", 1])
def test_named_inputs_and_one_value_per_batch(storage, batch_axis):
    from tests.support.onnx_models import build_gain_model

    # modelext feeds `gain` first, once per batch (input_type "0"), then `x` per item
    bundle = write_bundle(storage, model_core=build_gain_model(batch_axis),
                          modelext={"tensors": {"input": ["gain", "x"], "input_type": ["0", "1"]}})
    b = backend(bundle)
    assert b.input_ranks() == [1, 2]
    x = np.arange(20, dtype=np.float64).reshape(5, 4)
    for gain in (2.0, 0.5):
        y, total = b.predict([np.array([gain]), x])
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, x * gain)
        np.testing.assert_allclose(total, (x * gain).sum(axis=1))

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aiserving import backends
from aiserving.backends import create_backend
from aiserving.errors import BundleError, ConfigError
from tests.support.mxnet_models import SIZE, reference, write_bundle


def backend(**settings):
    return create_backend("mxnet", {"be.mxnet.device": "cpu", **settings})


def batch(n, seed=0):
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE))  # float64: the backend casts


def test_mxnet_is_supported_here(monkeypatch):
    # probe only mxnet, afresh: a child process imports the backend module
    monkeypatch.setattr(backends, "REGISTRY", {"mxnet": backends.REGISTRY["mxnet"]})
    monkeypatch.setattr(backends, "_probed", {})
    assert backends.supported_types() == ["mxnet"]


@pytest.mark.parametrize("n", [1, 5])
def test_a_batch_equals_the_raw_block(storage, n):
    bundle = write_bundle(storage, seed=3)
    b = backend()
    b.load(bundle)
    assert b.device == "cpu"
    block, calls = b._block, []
    b._block = lambda *arrays: calls.append(arrays) or block(*arrays)
    x = batch(n)
    scores, aux = b.predict([x])
    assert [(a.shape, a.dtype) for a in calls[0]] == [((n, 3, SIZE, SIZE), np.float32)]
    assert len(calls) == 1  # the whole batch in one forward
    want_scores, want_aux = reference(3, 3, x.astype(np.float32))
    assert scores.shape == (n, 3) and aux.shape == (n, 2)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux, want_aux, rtol=1e-5, atol=1e-5)
    b.unload()
    assert b._block is None


def test_prefix_and_the_newest_epoch(storage):
    bundle = write_bundle(storage, seed=10, prefix="resnet", epochs=(0, 7, 3),
                          modelext={"prefix": "resnet"})
    b = backend()
    b.load(bundle)
    x = batch(2).astype(np.float32)
    # epoch e holds the weights of seed + e: the highest epoch, 7, is loaded
    np.testing.assert_allclose(b.predict([x])[0], reference(3, 17, x)[0], rtol=1e-5, atol=1e-5)


def test_epoch_and_input_names_from_modelext(storage):
    bundle = write_bundle(storage, seed=10, epochs=(0, 2),
                          modelext={"epoch": 0, "tensors": {"input": ["data"]}})
    b = backend()
    b.load(bundle)
    x = batch(2).astype(np.float32)
    np.testing.assert_allclose(b.predict([x])[0], reference(3, 10, x)[0], rtol=1e-5, atol=1e-5)


def test_missing_params_named(storage):
    bundle = write_bundle(storage, modelext={"epoch": 4})
    with pytest.raises(BundleError, match=rf"bundle {bundle.fullhash}: file 'model-0004.params' "
                                          "is missing"):
        backend().load(bundle)
    bare = write_bundle(storage, name="bare", version="2")
    (bare.path / "model-0000.params").unlink()
    with pytest.raises(BundleError, match=rf"bundle {bare.fullhash}: file 'model-0000.params' is "
                                          r"missing \(no 'model-NNNN.params' weights"):
        backend().load(bare)


def test_missing_symbol_named(storage):
    bundle = write_bundle(storage, modelext={"prefix": "net"})
    with pytest.raises(BundleError, match=rf"bundle {bundle.fullhash}: file 'net-symbol.json' "
                                          "is missing"):
        backend().load(bundle)


def test_malformed_files(storage):
    bundle = write_bundle(storage)
    (bundle.path / "model-symbol.json").write_text("{not json")
    with pytest.raises(BundleError, match="model-symbol.json is not an MXNet symbol file") as err:
        backend().load(bundle)
    assert "Stack trace" not in err.value.message and "Traceback" not in err.value.message
    other = write_bundle(storage, name="other", version="2")
    (other.path / "model-0000.params").write_bytes(b"\x12\x01" + b"garbage" * 10)
    with pytest.raises(BundleError, match="model-symbol.json with model-0000.params cannot be "
                                          "loaded: .*Invalid NDArray file format") as err:
        backend().load(other)
    assert "Traceback" not in err.value.message


def test_weights_of_another_network_fail_clearly(storage):
    bundle = write_bundle(storage, labels=["a", "b", "c"])
    five = write_bundle(storage, name="five", labels=list("abcde"))
    (bundle.path / "model-0000.params").write_bytes((five.path / "model-0000.params").read_bytes())
    b = backend()
    b.load(bundle)  # the graph's shapes are checked only once an input shape is known
    with pytest.raises(RuntimeError, match="shape") as err:
        b.predict([batch(1)])
    assert "Stack trace" not in str(err.value) and "\n" not in str(err.value)


def test_wrong_input_name(storage):
    bundle = write_bundle(storage, modelext={"tensors": {"input": ["image"]}})
    with pytest.raises(BundleError, match=r"names \['image'\], which model-symbol.json does not "
                                          r"have; its inputs that are not weights: \['data'\]"):
        backend().load(bundle)


@pytest.mark.parametrize("ext, key", [({"prefix": "../x"}, "'prefix'"),
                                      ({"epoch": "new"}, "'epoch'"),
                                      ({"tensors": {"input": "data"}}, "'tensors.input'")])
def test_bad_modelext(storage, ext, key):
    with pytest.raises(BundleError, match=f"modelext {key}"):
        backend().load(write_bundle(storage, modelext=ext))


def test_feed_count_checked(storage):
    b = backend()
    b.load(write_bundle(storage))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \['data'\]; pre-processing gave 2"):
        b.predict([batch(1), batch(1)])


@pytest.mark.parametrize("device", ["gpu", "gpu:1", "cuda:0"])
def test_gpu_falls_back_to_cpu_with_a_warning(storage, caplog, monkeypatch, device):
    from aiserving.backends import mxnet as module

    monkeypatch.setattr(module.mx.context, "num_gpus", lambda: 1 if device == "gpu:1" else 0)
    b = backend(**{"be.mxnet.device": device})
    with caplog.at_level(logging.WARNING):
        b.load(write_bundle(storage))
    assert b.device == "cpu"
    assert f"MXNet device {device} asked for" in caplog.text
    assert ("only 1 GPU(s)" if device == "gpu:1" else "sees no GPU") in caplog.text
    x = batch(2).astype(np.float32)
    np.testing.assert_allclose(b.predict([x])[0], reference(3, 0, x)[0], rtol=1e-5, atol=1e-5)


def test_the_device_argument_wins_and_is_checked(storage, caplog):
    b = backend(**{"be.mxnet.device": "gpu:7"})
    with caplog.at_level(logging.WARNING):
        b.load(write_bundle(storage), device="cpu")
    assert "asked for" not in caplog.text
    with pytest.raises(ConfigError, match="MXNet device 'tpu' is not"):
        backend().load(write_bundle(storage, name="again", version="2"), device="tpu")


def test_a_threads_setting_after_import_is_warned(storage, caplog, monkeypatch):
    from aiserving.backends import mxnet as module

    bundle = write_bundle(storage)
    monkeypatch.setattr(module, "IMPORT_THREADS", 1)
    with caplog.at_level(logging.WARNING):
        backend(**{"backend.threads": 1}).load(bundle)
        assert "AISRV_BACKEND_THREADS" not in caplog.text
        backend(**{"backend.threads": 2}).load(bundle)
    assert ("backend.threads asks for 2 CPU threads, but MXNet was imported with 1 and reads "
            "its thread count only then: set AISRV_BACKEND_THREADS") in caplog.text
    caplog.clear()
    monkeypatch.setattr(module, "IMPORT_THREADS", None)  # OMP_NUM_THREADS chose: say nothing
    with caplog.at_level(logging.WARNING):
        backend(**{"backend.threads": 2}).load(bundle)
    assert "backend.threads" not in caplog.text


def run_child(code: str, **env) -> str:
    src = Path(__file__).resolve().parents[2] / "src"
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS", "AISRV_BACKEND_THREADS")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env={**base, "PYTHONPATH": str(src), **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("env, expected", [({"AISRV_BACKEND_THREADS": "3"}, "3"),
                                           ({"OMP_NUM_THREADS": "2"}, "None")])
def test_threads_come_from_the_environment_at_import(env, expected):
    out = run_child("""
        import os
        import aiserving.backends.mxnet as m
        print(m.IMPORT_THREADS, os.environ.get("MXNET_OMP_MAX_THREADS"))
    """, **env)
    assert out.split() == [expected, "None"]  # MXNET_OMP_MAX_THREADS set for the import only


def test_numpy_alias_set_by_the_backend_module_only():
    out = run_child("""
        import numpy as np
        assert "bool" not in vars(np), "this numpy has np.bool: the test proves nothing"
        import aiserving.backends.base, aiserving.bundle.vendor, aiserving.inference.pipeline
        print("bool" in vars(np))
        import aiserving.backends.mxnet
        print(np.bool is bool)
    """)
    assert out.split() == ["False", "True"]


def test_numpy_alias_left_alone_where_numpy_has_it():
    out = run_child("""
        import numpy as np
        np.bool = np.bool_  # what numpy 2 defines
        import aiserving.backends.mxnet
        print(np.bool is np.bool_)
    """)
    assert out.split() == ["True"]

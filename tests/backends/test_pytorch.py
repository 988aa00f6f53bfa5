import io
import logging

import numpy as np
import pytest
import torch

from aiserving.backends import create_backend, supported_types
from aiserving.errors import BundleError, UnsupportedBackend
from tests.support.bundles import tiny_model, write_bundle


def backend(**settings):
    return create_backend("pytorch", {"be.trpy.device": "cpu", "be.trpy.mixed_mode": False, **settings})


def test_pytorch_is_supported_here():
    assert "pytorch" in supported_types()
    with pytest.raises(UnsupportedBackend, match="unknown backend type 'caffe'"):
        create_backend("caffe", {})


@pytest.mark.parametrize("mode", ["structureSplit", "structureEmbed"])
def test_predict_matches_the_model(storage, mode):
    bundle = write_bundle(storage, mode=mode, seed=3)
    b = backend()
    b.load(bundle)
    x = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    (out,) = b.predict([x])
    with torch.no_grad():
        expected = tiny_model(3, seed=3)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    b.unload()


def test_cuda_request_falls_back_to_cpu_with_a_warning(storage, caplog):
    if torch.cuda.is_available():
        pytest.fail("this test expects a machine without CUDA; run the device checks instead")
    b = backend(**{"be.trpy.device": "cuda:0"})
    with caplog.at_level(logging.WARNING):
        b.load(write_bundle(storage))
    assert b.device == "cpu"
    assert "CUDA is not available" in caplog.text


def test_mismatched_weights_refused_unless_mixed_mode(storage, caplog):
    other = tiny_model(5)  # 5 classes: fc has the wrong shape for a 3-label structure
    buffer = io.BytesIO()
    torch.save({"state_dict": other.state_dict()}, buffer)
    bundle = write_bundle(storage)
    (bundle.path / "param.pth").write_bytes(buffer.getvalue())
    with pytest.raises(BundleError, match="does not fit the structure"):
        backend().load(bundle)
    mixed = backend(**{"be.trpy.mixed_mode": True})
    with caplog.at_level(logging.WARNING):
        mixed.load(bundle)
    assert "fc.weight" in caplog.text
    # the conv layer did load: it equals the saved one
    loaded = mixed._model.state_dict()["conv.weight"]
    assert torch.equal(loaded, other.state_dict()["conv.weight"])


def test_weights_that_carry_code_are_refused(storage):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "payload": Evil()}, buffer)
    bundle = write_bundle(storage)
    (bundle.path / "param.pth").write_bytes(buffer.getvalue())
    with pytest.raises(BundleError, match="param.pth cannot be loaded as weights"):
        backend().load(bundle)


def test_embed_needs_torchscript(storage):
    bundle = write_bundle(storage, mode="structureEmbed")
    (bundle.path / "model_core").write_bytes(b"not a torchscript archive")
    with pytest.raises(BundleError, match="not a TorchScript file"):
        backend().load(bundle)


def test_unknown_model_type(storage):
    from aiserving.bundle import BundleStore, DistroRecord

    rec = DistroRecord.create(name="x", labels=["a"], head="h", bone="b", impl="pytorch.onnxish")
    bundle = BundleStore(storage).write(rec, {"pre_dataprocess.py": "", "post_dataprocess.py": ""})
    with pytest.raises(BundleError, match="'onnxish' is not supported"):
        backend().load(bundle)

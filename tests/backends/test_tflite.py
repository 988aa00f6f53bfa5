"""The TF-Lite backend against TensorFlow's own interpreter, on small real models."""

import logging

import numpy as np
import pytest

from aiserving.backends import backend_class, create_backend
from aiserving.errors import BundleError
from tests.support.tflite_models import build_model, raw_outputs, write_bundle

IMAGE = (16, 16, 3)


def backend(bundle=None, **settings):
    b = create_backend("tensorflow-lite", {"backend.threads": 1, **settings})
    if bundle is not None:
        b.load(bundle)
    return b


def batch(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, *IMAGE)).astype(dtype)


def assert_outputs(actual, expected, rtol=1e-5, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def count_resizes(monkeypatch, b):
    calls = []
    original = b._interp.resize_tensor_input
    monkeypatch.setattr(b._interp, "resize_tensor_input",
                        lambda *a, **k: (calls.append(a[1]), original(*a, **k))[1])
    return calls


def test_the_registry_finds_the_backend_and_its_runtime():
    from aiserving.backends import tflite

    assert backend_class("tensorflow-lite") is tflite.TFLiteBackend
    assert "LiteRT" in tflite.RUNTIME  # ai_edge_litert is installed here: it is preferred


def test_dynamic_batch_is_one_resized_call(storage, monkeypatch, caplog):
    bundle = write_bundle(storage, "dynamic", seed=1)
    with caplog.at_level(logging.INFO, logger="aiserving.backends.tflite"):
        b = backend(bundle)
    assert b.input_ranks() == [4]
    resizes = count_resizes(monkeypatch, b)
    content = build_model("dynamic", 1)
    x = batch(4)
    # float64 feeds are cast to the model's float32
    assert_outputs(b.predict([x.astype(np.float64)]), raw_outputs(content, x))
    assert list(b._interp.get_input_details()[0]["shape"]) == [4, *IMAGE]
    assert_outputs(b.predict([batch(4, seed=1)]), raw_outputs(content, batch(4, seed=1)))
    assert len(resizes) == 1  # the size did not change: no second resize
    assert_outputs(b.predict([batch(2, seed=2)]), raw_outputs(content, batch(2, seed=2)))
    assert list(b._interp.get_input_details()[0]["shape"]) == [2, *IMAGE]
    assert_outputs(b.predict([batch(1, seed=3)]), raw_outputs(content, batch(1, seed=3)))
    assert caplog.text.count("batch axis is dynamic") == 1
    b.unload()
    assert b._interp is None


def test_fixed_batch_of_one_runs_item_by_item(storage, caplog):
    bundle = write_bundle(storage, "fixed", seed=2)
    b = backend(bundle)
    content = build_model("fixed", 2)
    with caplog.at_level(logging.INFO, logger="aiserving.backends.tflite"):
        for seed in range(3):
            x = batch(8, seed)
            out = b.predict([x])
            assert [o.shape for o in out] == [(8, 3), (8, 4)]
            assert_outputs(out, raw_outputs(content, x))
    assert b._mode == "single"
    assert list(b._interp.get_input_details()[0]["shape"]) == [1, *IMAGE]
    assert caplog.text.count("batches run item by item") == 1
    assert "cannot be resized" in caplog.text
    assert_outputs(b.predict([batch(1, 7)]), raw_outputs(content, batch(1, 7)))


def test_fixed_batch_that_resizes_cleanly_runs_batched(storage, caplog):
    bundle = write_bundle(storage, "fixed_agnostic", seed=3)
    b = backend(bundle)
    content = build_model("fixed_agnostic", 3)
    with caplog.at_level(logging.INFO, logger="aiserving.backends.tflite"):
        for seed in range(2):
            assert_outputs(b.predict([batch(4, seed)]), raw_outputs(content, batch(4, seed)))
    assert b._mode == "batched"
    assert list(b._interp.get_input_details()[0]["shape"]) == [4, *IMAGE]
    assert caplog.text.count("each batch runs in one call") == 1


def test_fixed_batch_that_mixes_items_when_resized_runs_item_by_item(storage):
    bundle = write_bundle(storage, "fixed_mixing", seed=4)
    content = build_model("fixed_mixing", 4)
    b = backend(bundle)
    same = np.repeat(batch(1), 4, axis=0)
    assert_outputs(b.predict([same]), raw_outputs(content, same))
    assert b._mode is None  # identical items cannot tell whether a resize mixes them
    for seed in range(2):
        x = batch(4, seed)
        assert_outputs(b.predict([x]), raw_outputs(content, x))
    assert b._mode == "single"


def test_quantized_model_takes_and_gives_floats(storage):
    bundle = write_bundle(storage, "quantized", seed=5)
    content = build_model("quantized", 5)
    b = backend(bundle)
    (inp,) = b._interp.get_input_details()
    assert inp["dtype"] == np.uint8 and inp["quantization"][0] > 0
    x = batch(3)
    out = b.predict([x])
    assert all(o.dtype == np.float32 for o in out)
    step = max(d["quantization"][0] for d in b._interp.get_output_details())
    assert_outputs(out, raw_outputs(content, x), rtol=0, atol=step * 1.01)
    # a bundle that feeds the quantized type gets the raw quantized outputs
    scale, zero = inp["quantization"]
    q = np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)
    raw = b.predict([q])
    assert all(o.dtype == np.uint8 for o in raw)
    assert_outputs(raw, raw_outputs(content, x, dequantize=False), rtol=0, atol=1)


def test_modelext_output_names_reorder_outputs(storage):
    bundle = write_bundle(storage, "dynamic", seed=6,
                          modelext={"tensors": {"input": ["image:0"],
                                                "output": ["Identity_1", "Identity:0"]}})
    b = backend(bundle)
    x = batch(3)
    scores, features = raw_outputs(build_model("dynamic", 6), x)
    assert_outputs(b.predict([x]), [features, scores])


@pytest.mark.parametrize("key", ["input", "output"])
def test_wrong_modelext_names_are_refused(storage, key):
    bundle = write_bundle(storage, "dynamic", modelext={"tensors": {key: ["logits:0"]}})
    with pytest.raises(BundleError) as err:
        backend(bundle)
    message = err.value.message
    assert bundle.fullhash in message and f"tensors.{key}" in message and "'logits:0'" in message
    assert ("'image'" if key == "input" else "'Identity', 'Identity_1'") in message


def test_garbage_empty_or_missing_model_core_is_a_bundle_error(storage):
    garbage = write_bundle(storage, "dynamic", model_core=b"\x00garbage" * 64)
    with pytest.raises(BundleError, match=f"bundle {garbage.fullhash}: model_core is not a "
                                          "TF-Lite model"):
        backend(garbage)
    empty = write_bundle(storage, "dynamic", model_core=b"", version="2")
    with pytest.raises(BundleError, match="model_core is empty"):
        backend(empty)
    (empty.path / "model_core").unlink()
    with pytest.raises(BundleError, match="'model_core' is missing"):
        backend(empty)


@pytest.mark.parametrize("fixed", [False, True])
def test_named_inputs_and_one_value_per_batch(storage, fixed):
    from tests.support.tflite_models import build_gain_model

    # modelext feeds `gain` first, once per batch (input_type "0"), then `x` per item
    bundle = write_bundle(storage, model_core=build_gain_model(1 if fixed else None),
                          modelext={"tensors": {"input": ["gain", "x"], "input_type": ["0", "1"]}})
    b = backend(bundle)
    assert b.input_ranks() == [1, 2]
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    for gain in (2.0, 0.5):
        y, total = b.predict([np.array([gain]), x])
        np.testing.assert_allclose(y, x * gain)
        np.testing.assert_allclose(total, (x * gain).sum(axis=1))
    assert list(b._interp.get_input_details()[1]["shape"]) == [1]  # never resized


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_without_litert_tensorflows_interpreter_is_used(storage, monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails, as where absent
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    spec = importlib.util.find_spec("aiserving.backends.tflite")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.RUNTIME.startswith("tf.lite.Interpreter (tensorflow 2.")
    b = module.TFLiteBackend({"backend.threads": 1})
    b.load(write_bundle(storage, "dynamic", seed=8))
    assert "tensorflow.lite" in type(b._interp).__module__
    x = batch(4)
    assert_outputs(b.predict([x]), raw_outputs(build_model("dynamic", 8), x))
    assert list(b._interp.get_input_details()[0]["shape"]) == [4, *IMAGE]

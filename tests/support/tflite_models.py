"""Small real TF-Lite models for tests, converted by TensorFlow from fixed-seed weights.

Every model takes a 16x16 RGB image (NHWC float32) and has two outputs, in
this order: `scores` (softmax over 3 classes) and `features` (4 pooled conv
channels). Kinds:

- "dynamic": batch axis -1 (resizes to any batch);
- "fixed": converted for batch 1 and flattened with a reshape to [1, 1024],
  so resizing it to another batch fails, as with many edge models;
- "fixed_agnostic": converted for batch 1, but nothing in it depends on the
  batch: it resizes and gives the same results;
- "fixed_mixing": converted for batch 1; it resizes without complaint, but a
  reshape to [1, -1] then mixes the items of a resized batch;
- "quantized": "dynamic" with full integer quantization (uint8 input and outputs).

`reference` computes a bundle's expected result with TensorFlow's own
interpreter (`tf.lite.Interpreter`), one item at a time.
"""

from __future__ import annotations

import functools
import textwrap
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from aiserving.bundle import BundleStore, DistroRecord

LABELS = ("circle", "square", "triangle")
KINDS = ("dynamic", "fixed", "fixed_agnostic", "fixed_mixing", "quantized")

# image -> 16x16x3 float32 in [0, 1]; BATCH_OF_ONE mimics old edge bundles that
# return a leading batch axis of 1.
PRE_PY = textwrap.dedent('''\
    import numpy as np
    from PIL import Image

    BATCH_OF_ONE = {batch_of_one}


    def pre_dataprocess(infer_data):
        image = Image.open(infer_data["path"]).convert("RGB").resize((16, 16))
        array = np.asarray(image, dtype=np.float32) / 255.0
        if BATCH_OF_ONE:
            array = array[None]
        return {{"feed_list": [array], "passby": {{"path": infer_data["path"]}}}}
''')

POST_PY = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores, features = (np.asarray(o, dtype=np.float64) for o in post_frame["infers"])
        best = int(scores.argmax())
        return {"path": post_frame["passby"]["path"], "label": post_frame["labels"][best],
                "name": post_frame["mapping"][best], "scores": scores.tolist(),
                "features": features.tolist()}
''')


def image_array(path: Path) -> np.ndarray:
    """What PRE_PY makes of an image, without the batch axis."""
    image = Image.open(path).convert("RGB").resize((16, 16))
    return np.asarray(image, dtype=np.float32) / 255.0


def write_images(folder: Path, count: int, size: int = 24) -> list[Path]:
    """Distinct PNGs (lossless: the reference sees exactly the node's pixels)."""
    paths = []
    for n in range(count):
        rng = np.random.default_rng(100 + n)
        path = Path(folder) / f"tfl{n}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=None)
def build_model(kind: str = "dynamic", seed: int = 0) -> bytes:
    """The .tflite flatbuffer of one kind of model."""
    if kind not in KINDS:
        raise ValueError(kind)
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((3, 3, 3, 4)) * 0.5).astype(np.float32)
    conv_b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    dense = rng.standard_normal((4, 3)).astype(np.float32)
    flat_dense = (rng.standard_normal((16 * 16 * 4, 3)) * 0.05).astype(np.float32)
    batch = 1 if kind.startswith("fixed") else None

    @tf.function(input_signature=[tf.TensorSpec([batch, 16, 16, 3], tf.float32, name="image")])
    def model(x):
        y = tf.nn.relu(tf.nn.conv2d(x, conv_w, 1, "SAME") + conv_b)
        features = tf.reduce_mean(y, axis=[1, 2])
        if kind == "fixed":
            logits = tf.matmul(tf.reshape(y, [1, 16 * 16 * 4]), flat_dense)
        elif kind == "fixed_mixing":
            features = features - tf.reduce_mean(tf.reshape(y, [1, -1]))
            logits = tf.matmul(features, dense)
        else:
            logits = tf.matmul(features, dense)
        return tf.nn.softmax(logits), features

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model)
    if kind == "quantized":
        calib = np.random.default_rng(seed + 1)

        def representative():
            for _ in range(16):
                yield [calib.random((1, 16, 16, 3), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        # full-integer conversion warns that the input's statistics come from calibration
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


def tf_interpreter(content: bytes):
    """TensorFlow's own interpreter (deprecated in favour of LiteRT, hence the filter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(model_content=content)
    interp.allocate_tensors()
    return interp


def raw_outputs(content: bytes, x: np.ndarray, dequantize: bool = True) -> list[np.ndarray]:
    """Outputs for the float batch `x`, computed one item at a time with tf.lite."""
    interp = tf_interpreter(content)
    (inp,) = interp.get_input_details()
    parts = []
    for item in x:
        feed = item[None]
        scale, zero = inp["quantization"]
        if scale:
            feed = np.clip(np.round(feed / scale + zero), 0, 255)
        interp.set_tensor(inp["index"], feed.astype(inp["dtype"]))
        interp.invoke()
        outs = []
        for d in interp.get_output_details():
            out = interp.get_tensor(d["index"])
            scale, zero = d["quantization"]
            if scale and dequantize:
                out = (out.astype(np.float32) - zero) * scale
            outs.append(out)
        parts.append(outs)
    return [np.concatenate(p) for p in zip(*parts)]


def write_bundle(storage: Path, kind: str = "dynamic", *, seed: int = 0, name: str | None = None,
                 modelext: dict | None = None, model_core: bytes | None = None,
                 batch_of_one: bool | None = None, version: str = "1"):
    """A TF-Lite JSM bundle as a vendor packs it; returns the stored Bundle."""
    if batch_of_one is None:
        batch_of_one = kind.startswith("fixed")
    files = {
        "pre_dataprocess.py": PRE_PY.format(batch_of_one=batch_of_one),
        "post_dataprocess.py": POST_PY,
        "model_core": build_model(kind, seed) if model_core is None else model_core,
    }
    record = DistroRecord.create(name=name or f"tflite-{kind}-{seed}", labels=list(LABELS),
                                 head="TinyLite", bone=f"{kind}{seed}",
                                 impl="tensorflow-lite.tflite", version=version,
                                 modelext=modelext or "")
    return BundleStore(storage).write(record, files)


def reference(bundle, path: Path) -> dict:
    """The bundle's post-processing result for one image, from tf.lite at batch 1."""
    content = (bundle.path / "model_core").read_bytes()
    scores, features = (o[0].astype(np.float64) for o in raw_outputs(content, image_array(path)[None]))
    best = int(scores.argmax())
    labels = bundle.record.labels
    return {"path": str(path), "label": labels[best], "name": bundle.record.mapping[best],
            "scores": scores.tolist(), "features": features.tolist()}


@functools.lru_cache(maxsize=None)
def build_gain_model(batch: int | None = None) -> bytes:
    """Two inputs: `x` (per item, 4 values) and `gain` (one per batch, shape [1]);
    outputs `x * gain` and its sum per item."""

    @tf.function(input_signature=[tf.TensorSpec([batch, 4], tf.float32, name="x"),
                                  tf.TensorSpec([1], tf.float32, name="gain")])
    def model(x, gain):
        y = x * gain
        return y, tf.reduce_sum(y, axis=1)

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model).convert()

"""A small real TensorFlow SavedModel as TensorFlow Serving serves it, and bundles for it.

`export_models(base)` writes what TF Serving's `--model_base_path` holds: one
SavedModel per numeric version folder (weights from a seed equal to the version,
so versions answer differently), plus a non-numeric folder servers ignore.
Every version has two signatures over an 8x8 RGB image (NHWC float32):

- "predict": inputs `image` [N, 8, 8, 3] and `gain` (a scalar shared by the batch),
  outputs `scores` [N, 4] (softmax of gain * logits) and `embedding` [N, 2];
- "serving_default": input `image` only (gain 1), the same two outputs;
- "scores": input `image` only, one output `scores` (REST leaves its name out).

`reference` runs a version with TensorFlow itself; bundles (`write_bundle`) hold
only distros.json and the vendor pre/post scripts: the model lives on the server.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from aiserving.bundle import BundleStore, DistroRecord

LABELS = ("red", "green", "blue", "grey")
VERSIONS = (1, 2, 10)  # 10 is the newest: a lexical sort would pick 2

# image -> 8x8x3 float64 in [0, 1] (numpy's default dtype, as many vendor scripts
# return: the backend casts it to the signature's float32); GAIN, if not None, is a
# second feed shared by the whole batch (modelext input_type "0").
PRE_PY = textwrap.dedent('''\
    import numpy as np
    from PIL import Image

    GAIN = {gain!r}


    def pre_dataprocess(infer_data):
        image = Image.open(infer_data["path"]).convert("RGB").resize((8, 8))
        array = np.asarray(image) / 255.0
        feeds = [array] if GAIN is None else [array, np.float32(GAIN)]
        return {{"feed_list": feeds, "passby": {{"path": infer_data["path"]}}}}
''')

# Outputs arrive in modelext tensors.output order: scores, embedding.
POST_PY = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores, embedding = (np.asarray(o, dtype=np.float64) for o in post_frame["infers"])
        best = int(scores.argmax())
        return {"path": post_frame["passby"]["path"], "label": post_frame["labels"][best],
                "scores": scores.tolist(), "embedding": embedding.tolist()}
''')


class Net(tf.Module):
    def __init__(self, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(0, 0.3, (192, 4)).astype(np.float32))
        self.b = tf.Variable(rng.normal(0, 0.3, (4,)).astype(np.float32))
        self.v = tf.Variable(rng.normal(0, 0.3, (192, 2)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32),
                                  tf.TensorSpec([], tf.float32)])
    def predict(self, image, gain):
        flat = tf.reshape(image, [-1, 192])
        return {"scores": tf.nn.softmax((flat @ self.w + self.b) * gain),
                "embedding": tf.tanh(flat @ self.v)}

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def serve(self, image):
        return self.predict(image, tf.constant(1.0))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def scores_only(self, image):
        return {"scores": self.predict(image, tf.constant(1.0))["scores"]}


def export_models(base: Path, versions=VERSIONS) -> Path:
    """TF Serving's model base path: `<base>/<version>/` SavedModels."""
    for version in versions:
        net = Net(seed=version)
        tf.saved_model.save(net, str(base / str(version)),
                            signatures={"predict": net.predict, "serving_default": net.serve,
                                        "scores": net.scores_only})
    (base / "tmp-export").mkdir()  # not a number: TF Serving ignores it, so must the stand-in
    return base


@functools.lru_cache(maxsize=None)
def _loaded(path: str):
    return tf.saved_model.load(path)


def reference(base: Path, version: int, signature: str = "predict", **inputs) -> dict:
    """One version's outputs for `inputs`, computed by TensorFlow itself."""
    fn = _loaded(str(base / str(version))).signatures[signature]
    out = fn(**{k: tf.constant(v, tf.float32) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def image_feed(path: Path) -> np.ndarray:
    """What PRE_PY feeds for the image at `path`."""
    return np.asarray(Image.open(path).convert("RGB").resize((8, 8))) / 255.0


def expected(base: Path, version: int, path: Path, gain: float | None = 1.5) -> dict:
    """What POST_PY returns for the image at `path` (signature "predict", or
    "serving_default" when `gain` is None)."""
    image = image_feed(path)[None]
    if gain is None:
        out = reference(base, version, "serving_default", image=image)
    else:
        out = reference(base, version, "predict", image=image, gain=np.float32(gain))
    scores, embedding = out["scores"][0], out["embedding"][0]
    return {"path": str(path), "label": LABELS[int(scores.argmax())],
            "scores": scores.tolist(), "embedding": embedding.tolist()}


def write_bundle(storage: Path, name: str, *, gain: float | None = 1.5, version: str = "1",
                 modelext: dict | None = None, bone: str = "dense"):
    """A tensorflow-serving bundle: distros.json and vendor scripts, no model file."""
    if modelext is None:
        modelext = {"tensors": {"input": ["image", "gain"], "input_type": ["1", "0"],
                                "output": ["scores", "embedding"]}}
    record = DistroRecord.create(name=name, labels=list(LABELS), head="TinyDense", bone=bone,
                                 impl="tensorflow-serving.savedmodel", version=version,
                                 modelext=modelext)
    return BundleStore(storage).write(record, {"pre_dataprocess.py": PRE_PY.format(gain=gain),
                                               "post_dataprocess.py": POST_PY})

"""Small real TensorFlow JSM bundles for tests, built with TensorFlow itself.

One tiny network, three ways a vendor ships it:

- `tensorflow.frozen`: a GraphDef frozen with `convert_variables_to_constants`;
- `tensorflow.unfrozen`, old layout: a TF1 SavedModel whose `saved_model.pb` is
  renamed `model_core`, its `variables/` beside it in the bundle folder;
- `tensorflow.unfrozen`, folder layout: a TF2 `tf.saved_model.save` SavedModel
  as a whole in a `model_core/` folder (graph tensor names read from its
  `serving_default` signature).

The network has two inputs -- `image` (N x 16 x 16 x 3 float32, one per item,
input_type "1") and `is_train` (a scalar bool shared by the batch, input_type
"0") -- and three outputs: `scores` (N x 3, a conv + dense layer with weights
from a fixed seed), `mean` (N, the item's mean pixel) and `probs` (N x 3:
softmax of the scores, or their sigmoid when `is_train` is set).

Pre-processing uses OpenCV as vendors do. `TFModel.reference(path)` computes
the expected result with raw TensorFlow on the same model files (a plain
session for the GraphDef, `tf.saved_model.load` for SavedModels), never with
the backend under test.
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from aiserving.bundle import BundleStore, DistroRecord

SIZE = 16
LABELS = ("cat", "dog", "bird")
OUTPUTS = ("scores", "mean", "probs")  # the order bundles name them in modelext

PRE_PY = textwrap.dedent('''\
    import cv2
    import numpy as np

    SIZE = {size}
    IS_TRAIN = {is_train}
    BATCH_OF_ONE = {batch_of_one}


    def pre_dataprocess(infer_data):
        image = cv2.imread(infer_data["path"], cv2.IMREAD_COLOR)
        if image is None:
            return None
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        if BATCH_OF_ONE:
            image = np.expand_dims(image, 0)  # old bundles hand a batch of one
        return {{"feed_list": [image, IS_TRAIN], "passby": {{"path": infer_data["path"]}}}}
''')

POST_PY = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores, mean, probs = post_frame["infers"]
        best = int(np.argmax(scores))
        return {"path": post_frame["passby"]["path"], "scores": scores.tolist(),
                "label": post_frame["labels"][best], "mean": float(mean),
                "probs": probs.tolist()}
''')


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32),
            "b1": rng.normal(0, 0.1, (4,)).astype(np.float32),
            "w2": rng.normal(0, 0.5, (4, 3)).astype(np.float32),
            "b2": rng.normal(0, 0.1, (3,)).astype(np.float32)}


def _network(image, is_train, v: dict) -> dict:
    hidden = tf.nn.relu(tf.nn.conv2d(image, v["w1"], strides=1, padding="SAME") + v["b1"])
    # Op names are unique regardless of case: keep "Mean" free for the output "mean".
    scores = tf.matmul(tf.reduce_mean(hidden, axis=[1, 2], name="pool"), v["w2"]) + v["b2"]
    flag = tf.cast(is_train, tf.float32)
    probs = tf.nn.softmax(scores) * (1.0 - flag) + tf.sigmoid(scores) * flag
    return {"scores": scores, "mean": tf.reduce_mean(image, axis=[1, 2, 3], name="pixel_mean"),
            "probs": probs}


def _v1_graph(seed: int):
    """A TF1 graph with variables: (graph, inputs, outputs), tensors named as in modelext."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="image")
        is_train = tf.compat.v1.placeholder_with_default(False, [], name="is_train")
        v = {k: tf.compat.v1.Variable(a, name=k) for k, a in weights(seed).items()}
        out = {k: tf.identity(t, name=k) for k, t in _network(image, is_train, v).items()}
    return graph, {"image": image, "is_train": is_train}, out


def frozen_graph_def(seed: int = 0) -> bytes:
    graph, _, _ = _v1_graph(seed)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.variables_initializer(graph.get_collection("variables")))
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), list(OUTPUTS))
    return frozen.SerializeToString()


def saved_model_v1(export_dir: Path, seed: int = 0) -> Path:
    """A SavedModel written by the TF1 builder (graph names image:0, scores:0, ...)."""
    graph, inputs, outputs = _v1_graph(seed)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.variables_initializer(graph.get_collection("variables")))
        builder = tf.compat.v1.saved_model.Builder(str(export_dir))
        signature = tf.compat.v1.saved_model.predict_signature_def(inputs, outputs)
        builder.add_meta_graph_and_variables(sess, ["serve"],
                                             signature_def_map={"serving_default": signature})
        builder.save()
    return export_dir


def saved_model_v2(export_dir: Path, seed: int = 0) -> Path:
    """A SavedModel written by TF2 `tf.saved_model.save` (graph names from its signature)."""
    module = tf.Module()
    module.v = {k: tf.Variable(a, name=k) for k, a in weights(seed).items()}

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image"),
                                  tf.TensorSpec([], tf.bool, name="is_train")])
    def serve(image, is_train):
        return _network(image, is_train, module.v)

    module.serve = serve
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": serve})
    return export_dir


def signature_tensors(pb_path: Path, key: str = "serving_default") -> tuple[dict, dict]:
    """{input key: graph tensor name}, {output key: graph tensor name} of a signature."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(Path(pb_path).read_bytes())
    signature = saved.meta_graphs[0].signature_def[key]
    return ({k: t.name for k, t in signature.inputs.items()},
            {k: t.name for k, t in signature.outputs.items()})


def preprocess(path: Path) -> np.ndarray:
    """The bundle's pre-processing of one image (no batch axis), in plain OpenCV."""
    image = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (SIZE, SIZE),
                       interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def raw_frozen(graph_def: bytes) -> Callable:
    """Raw TensorFlow: run the GraphDef in a plain session; outputs in OUTPUTS order."""
    graph = tf.Graph()
    with graph.as_default():
        gd = tf.compat.v1.GraphDef()
        gd.ParseFromString(graph_def)
        tf.compat.v1.import_graph_def(gd, name="")
    sess = tf.compat.v1.Session(graph=graph)

    def run(batch: np.ndarray, is_train: bool) -> list[np.ndarray]:
        return sess.run([f"{k}:0" for k in OUTPUTS],
                        {"image:0": batch, "is_train:0": is_train})
    return run


def raw_saved_model(export_dir: Path) -> Callable:
    """Raw TensorFlow: the SavedModel's serving_default signature, eagerly."""
    fn = tf.saved_model.load(str(export_dir)).signatures["serving_default"]

    def run(batch: np.ndarray, is_train: bool) -> list[np.ndarray]:
        out = fn(image=tf.constant(batch), is_train=tf.constant(is_train))
        return [out[k].numpy() for k in OUTPUTS]
    return run


@dataclass
class TFModel:
    bundle: object
    run: Callable[[np.ndarray, bool], list[np.ndarray]]  # raw TF: batch, flag -> outputs
    is_train: bool
    export_dir: Path | None = None
    tensors: dict = field(default_factory=dict)  # modelext "tensors"

    def reference(self, path: Path) -> dict:
        """The result the bundle should give for one image: raw TF on a batch of one."""
        scores, mean, probs = (o[0] for o in self.run(preprocess(path)[None], self.is_train))
        labels = self.bundle.record.labels
        return {"path": str(path), "scores": scores.tolist(),
                "label": labels[int(np.argmax(scores))], "mean": float(mean),
                "probs": probs.tolist()}


def _write(storage: Path, mode: str, bone: str, tensors: dict | None, files: dict,
           is_train: bool, batch_of_one: bool, name: str, version: str):
    files = {"pre_dataprocess.py": PRE_PY.format(size=SIZE, is_train=is_train,
                                                 batch_of_one=batch_of_one),
             "post_dataprocess.py": POST_PY, **files}
    modelext = {"tensors": tensors} if tensors is not None else {}
    record = DistroRecord.create(name=name, labels=list(LABELS), head="TinyTF",
                                 bone=bone, impl=f"tensorflow.{mode}",
                                 version=version, modelext=modelext)
    return BundleStore(storage).write(record, files)


def frozen_tensors(outputs=OUTPUTS) -> dict:
    return {"input": ["image:0", "is_train:0"], "output": [f"{k}:0" for k in outputs],
            "input_type": ["1", "0"]}


def write_frozen(storage: Path, *, seed: int = 0, is_train: bool = False,
                 batch_of_one: bool = True, tensors: dict | None = None, name: str = "tf-frozen",
                 version: str = "1") -> TFModel:
    graph_def = frozen_graph_def(seed)
    tensors = frozen_tensors() if tensors is None else tensors
    bundle = _write(storage, "frozen", f"frozen{seed}", tensors, {"model_core": graph_def},
                    is_train, batch_of_one, name, version)
    return TFModel(bundle, raw_frozen(graph_def), is_train, tensors=tensors)


def write_frozen_bundle(storage: Path, **kwargs):
    """The frozen bundle alone (scripts/gpu_check.py)."""
    return write_frozen(storage, **kwargs).bundle


def batch_feeds(n: int, seed: int = 0, is_train: bool = False) -> list[np.ndarray]:
    """Backend feeds for a batch of n random images and the shared flag."""
    images = np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)
    return [images, np.asarray(is_train)]


def write_unfrozen(storage: Path, work: Path, *, layout: str = "old", seed: int = 0,
                   is_train: bool = False, tensors: dict | None = None,
                   name: str = "tf-unfrozen", version: str = "1") -> TFModel:
    """layout "old": TF1 SavedModel, saved_model.pb as model_core, variables/ beside it.
    layout "folder": TF2 SavedModel as a whole in model_core/; modelext names come
    from its signature unless `tensors` is given ({} leaves them out)."""
    export_dir = work / f"export-{layout}-{seed}-{version}"
    if layout == "old":
        saved_model_v1(export_dir, seed)
        default = frozen_tensors()
    else:
        saved_model_v2(export_dir, seed)
        ins, outs = signature_tensors(export_dir / "saved_model.pb")
        default = {"input": [ins["image"], ins["is_train"]], "output": [outs[k] for k in OUTPUTS],
                   "input_type": ["1", "0"]}
    tensors = default if tensors is None else tensors
    bundle = _write(storage, "unfrozen", f"{layout}{seed}", tensors or None, {}, is_train,
                    False, name, version)
    if layout == "old":
        shutil.copyfile(export_dir / "saved_model.pb", bundle.path / "model_core")
        for sub in ("variables", "assets"):
            if (export_dir / sub).is_dir():
                shutil.copytree(export_dir / sub, bundle.path / sub)
    else:
        shutil.copytree(export_dir, bundle.path / "model_core")
    return TFModel(bundle, raw_saved_model(export_dir), is_train, export_dir, tensors)


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    """A distinct PNG (lossless: the reference reads exactly the node's pixels)."""
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return path


def listing(folder: Path) -> list[tuple]:
    """Every entry under a folder: relative name, kind, size, mtime (ns)."""
    folder = Path(folder)
    out = [(".", "dir", 0, folder.stat().st_mtime_ns)]
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        out.append((str(p.relative_to(folder)), kind, st.st_size if kind == "file" else 0,
                    st.st_mtime_ns))
    return out


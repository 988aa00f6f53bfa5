"""Small real ONNX models for tests, built with onnx.helper from fixed-seed weights.

Every model takes `image`, a 3x16x16 RGB image (NCHW float32): Conv(4, 3x3) ->
Relu -> GlobalAveragePool -> Flatten gives `features` (4), MatMul + Add ->
Softmax gives `scores` (3 classes). Outputs in this order: `scores`,
`features`. Kinds: "dynamic" (batch axis "N") and "fixed" (batch axis 1).
Opset 17, IR version 8: what onnxruntime 1.31 (and older edge builds) accept.

`reference` computes a bundle's expected result with a plain onnxruntime
session, one item at a time.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from aiserving.bundle import BundleStore, DistroRecord

LABELS = ("circle", "square", "triangle")
OPSET, IR_VERSION = 17, 8

# image -> 3x16x16 float32 in [0, 1]; BATCH_OF_ONE mimics old bundles that return a
# leading batch axis of 1.
PRE_PY = textwrap.dedent('''\
    import numpy as np
    from PIL import Image

    BATCH_OF_ONE = {batch_of_one}


    def pre_dataprocess(infer_data):
        image = Image.open(infer_data["path"]).convert("RGB").resize((16, 16))
        array = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)
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
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def write_images(folder: Path, count: int, size: int = 24) -> list[Path]:
    """Distinct PNGs (lossless: the reference sees exactly the node's pixels)."""
    paths = []
    for n in range(count):
        rng = np.random.default_rng(200 + n)
        path = Path(folder) / f"onnx{n}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=None)
def build_model(kind: str = "dynamic", seed: int = 0) -> bytes:
    """The serialized ModelProto of one kind of model, checked by onnx.checker."""
    batch = {"dynamic": "N", "fixed": 1}[kind]
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "FC"),
        numpy_helper.from_array((rng.standard_normal(3) * 0.1).astype(np.float32), "FCB"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "FC"], ["matmul"]),
        helper.make_node("Add", ["matmul", "FCB"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, f"tiny_{kind}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 4])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="aiserving-tests")
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def raw_outputs(content: bytes, x: np.ndarray) -> list[np.ndarray]:
    """Outputs for the batch `x`, computed one item at a time by a plain session."""
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: item[None].astype(np.float32)}) for item in x]
    return [np.concatenate(p) for p in zip(*parts)]


def write_bundle(storage: Path, kind: str = "dynamic", *, seed: int = 0, name: str | None = None,
                 modelext: dict | None = None, model_core: bytes | None = None,
                 batch_of_one: bool | None = None, version: str = "1"):
    """An ONNX JSM bundle as a vendor packs it; returns the stored Bundle."""
    if batch_of_one is None:
        batch_of_one = kind == "fixed"
    files = {
        "pre_dataprocess.py": PRE_PY.format(batch_of_one=batch_of_one),
        "post_dataprocess.py": POST_PY,
        "model_core": build_model(kind, seed) if model_core is None else model_core,
    }
    record = DistroRecord.create(name=name or f"onnx-{kind}-{seed}", labels=list(LABELS),
                                 head="TinyOnnx", bone=f"{kind}{seed}", impl="onnx.onnx",
                                 version=version, modelext=modelext or "")
    return BundleStore(storage).write(record, files)


def reference(bundle, path: Path) -> dict:
    """The bundle's post-processing result for one image, from onnxruntime at batch 1."""
    content = (bundle.path / "model_core").read_bytes()
    scores, features = (o[0].astype(np.float64) for o in raw_outputs(content, image_array(path)[None]))
    best = int(scores.argmax())
    return {"path": str(path), "label": bundle.record.labels[best],
            "name": bundle.record.mapping[best], "scores": scores.tolist(),
            "features": features.tolist()}


@functools.lru_cache(maxsize=None)
def build_gain_model(batch: int | str = "N") -> bytes:
    """Two inputs: `x` (per item, 4 values) and `gain` (one per batch, shape [1]);
    outputs `y` = x * gain and `total`, its sum per item."""
    nodes = [helper.make_node("Mul", ["x", "gain"], ["y"]),
             helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "gain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="aiserving-tests")
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()

"""RKNN models for tests: stand-in .rknn files here, a real .rknn on a Rockchip board.

By default the stand-in `rknnlite` (tests/support/rknnlite_standin, see its
docstring) is put first on sys.path when this module is imported, before any
test imports the backend module, and nodes get it through PYTHONPATH
(`node_env()`). On a board, `AISRV_TEST_REAL_RKNN=1` makes the same tests run the
real rknn-toolkit-lite2 instead, on the .rknn file named by
`AISRV_TEST_RKNN_MODEL`, whose input per item is `AISRV_TEST_RKNN_INPUT`
("H,W,C", default "224,224,3": uint8 NHWC, like the toolkit's resnet18 example)
built for batch `AISRV_TEST_RKNN_BATCH` (default 1).

Expected results always come from the raw `RKNNLite` run item by item in the
test process (`raw_outputs`); with the stand-in they are also checked against an
independent numpy formula of the network (`numpy_outputs`).
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from aiserving.bundle import BundleStore, DistroRecord

REAL = os.environ.get("AISRV_TEST_REAL_RKNN") == "1"
STANDIN = Path(__file__).resolve().parent / "rknnlite_standin"
MAGIC = b"AISRV-RKNN-STANDIN-1\n"  # the stand-in's own file header

if not REAL and str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

from rknnlite.api import RKNNLite  # noqa: E402  (the real one or the stand-in, per the above)

if REAL:
    assert STANDIN not in Path(sys.modules["rknnlite"].__file__).resolve().parents, \
        "AISRV_TEST_REAL_RKNN=1 but the stand-in rknnlite is on the path"


def node_env() -> dict:
    """Environment a node needs to find rknnlite."""
    return {} if REAL else {"PYTHONPATH": str(STANDIN)}


def standin_class() -> type:
    """The stand-in RKNNLite, also on a board (for tests of the backend's own logic)."""
    if not REAL:
        return RKNNLite
    path = STANDIN / "rknnlite" / "api" / "rknn_lite.py"
    spec = importlib.util.spec_from_file_location("aisrv_test_standin_rknn_lite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RKNNLite


@dataclass
class Model:
    path: Path  # the .rknn file
    item_shape: tuple  # one item's input, NHWC without the batch axis
    batch: int  # the batch the model was built with (rknn_batch_size)
    weights: dict | None = None  # the stand-in network's weights; None for a real model

    @property
    def modelext(self) -> dict:
        return {} if self.batch == 1 else {"batch": self.batch}

    def items(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (n, *self.item_shape), dtype=np.uint8)


def model(folder: Path, *, seed: int = 0, batch: int = 1, classes: int = 3) -> Model:
    """The model tests run: a stand-in one written into `folder`, or the board's real one."""
    if REAL:
        shape = os.environ.get("AISRV_TEST_RKNN_INPUT", "224,224,3")
        shape = tuple(int(d) for d in shape.split(","))
        return Model(Path(os.environ["AISRV_TEST_RKNN_MODEL"]), shape,
                     int(os.environ.get("AISRV_TEST_RKNN_BATCH", "1")))
    return standin_model(folder, seed=seed, batch=batch, classes=classes)


def standin_model(folder: Path, *, seed: int = 0, batch: int = 1, classes: int = 3,
                  item_shape=(8, 8, 3), hidden: int = 16) -> Model:
    """Write a stand-in .rknn file: header + npz of a two-layer network's weights."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(item_shape))
    # scaled for uint8 pixels: hidden values of about unit size
    weights = {"w1": rng.normal(0, 1 / (128 * np.sqrt(size)), (size, hidden)),
               "b1": rng.normal(0, 0.5, hidden), "w2": rng.normal(0, 0.5, (hidden, classes)),
               "b2": rng.normal(0, 0.5, classes)}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    buffer = io.BytesIO()
    np.savez(buffer, input_shape=np.array([batch, *item_shape]), **weights)
    path = Path(folder) / f"standin-{seed}-b{batch}.rknn"
    path.write_bytes(MAGIC + buffer.getvalue())
    return Model(path, tuple(item_shape), batch, weights)


def numpy_outputs(m: Model, items: np.ndarray) -> list[np.ndarray]:
    """The stand-in network computed here, independently of the stand-in's code."""
    w = m.weights
    x = items.reshape(len(items), -1).astype(np.float32)
    logits = np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [logits, probs]


def raw_outputs(m: Model, items: np.ndarray) -> list[np.ndarray]:
    """The raw RKNNLite on `items`, one inference call per item (padded to the model's batch)."""
    rknn = RKNNLite()
    try:
        assert rknn.load_rknn(str(m.path)) == 0
        assert rknn.init_runtime() == 0
        rows = []
        for item in items:
            outputs = rknn.inference(inputs=[np.repeat(item[None], m.batch, axis=0)])
            assert outputs is not None, "the raw RKNNLite failed"
            rows.append([np.asarray(o)[:1] for o in outputs])
        return [np.concatenate(column) for column in zip(*rows)]
    finally:
        rknn.release()


# --- bundles --------------------------------------------------------------------------

PRE = textwrap.dedent('''\
    import numpy as np
    from PIL import Image

    HEIGHT, WIDTH = {height}, {width}


    def pre_dataprocess(infer_data):
        image = Image.open(infer_data["path"]).convert("RGB").resize((WIDTH, HEIGHT))
        return {{"feed_list": [np.asarray(image, dtype=np.uint8)],
                 "passby": {{"path": infer_data["path"]}}}}
''')

POST = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores = np.asarray(post_frame["infers"][0], dtype=np.float64).ravel()
        best = int(scores.argmax())
        labels = post_frame["labels"]
        return {"path": post_frame["passby"]["path"], "scores": scores.tolist(),
                "label": labels[best] if best < len(labels) else str(best),
                "outputs": len(post_frame["infers"])}
''')


def write_bundle(storage: Path, m: Model, *, name: str = "rktiny", labels=("cat", "dog", "bird"),
                 version: str = "1", core: bytes | None = None, modelext: dict | None = None):
    """Write an `rknn.npu` bundle whose model_core is `m` (or `core`, if given)."""
    files = {"pre_dataprocess.py": PRE.format(height=m.item_shape[0], width=m.item_shape[1]),
             "post_dataprocess.py": POST,
             "model_core": m.path.read_bytes() if core is None else core}
    record = DistroRecord.create(name=name, labels=list(labels), head="Tiny", bone=name,
                                 impl="rknn.npu", version=version,
                                 modelext=modelext if modelext is not None else m.modelext)
    return BundleStore(storage).write(record, files)


def image_array(m: Model, path: Path) -> np.ndarray:
    """What the bundle's pre-processing makes of an image."""
    height, width = m.item_shape[:2]
    return np.asarray(Image.open(path).convert("RGB").resize((width, height)), dtype=np.uint8)


def expected_result(m: Model, labels, path: Path) -> dict:
    """The post-processing result of the raw RKNNLite's outputs for the image at `path`."""
    outputs = raw_outputs(m, image_array(m, path)[None])
    scores = outputs[0][0].astype(np.float64).ravel()
    best = int(scores.argmax())
    return {"path": str(path), "scores": scores.tolist(),
            "label": labels[best] if best < len(labels) else str(best), "outputs": len(outputs)}

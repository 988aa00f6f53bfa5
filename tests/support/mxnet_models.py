"""Small real MXNet bundles for tests: a Gluon HybridBlock exported as vendors do.

The network (conv -> pool -> two dense heads) returns two outputs, so the
several-outputs path is exercised too. Its weights come from a fixed seed
(numpy, not MXNet's RNG), so `reference` recomputes the expected outputs with
a fresh raw Gluon block, independently of the exported files.
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

# MXNet as the backend module imports it: that module makes MXNet 1.9 importable under
# numpy >= 1.24 (numpy.bool); nothing else here sets the alias.
from aiserving.backends.mxnet import gluon, mx
from aiserving.bundle import BundleStore, DistroRecord
from tests.support.bundles import PRE_PY

nn = gluon.nn

SIZE = 16  # input images are 3 x SIZE x SIZE

PRE = PRE_PY.format(grey=False, batch_of_one=False, delay=0.0)

POST = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores = np.asarray(post_frame["infers"][0])
        best = int(scores.argmax())
        return {"path": post_frame["passby"]["path"], "scores": scores.tolist(),
                "label": post_frame["labels"][best],
                "aux": np.asarray(post_frame["infers"][1]).tolist()}
''')


class TwoHeads(gluon.HybridBlock):
    """Conv2D + pooling, then a class head and a sigmoid side head."""

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(4, 3, padding=1, in_channels=3)
            self.pool = nn.MaxPool2D(4)
            self.fc = nn.Dense(classes, in_units=4 * (SIZE // 4) ** 2)
            self.side = nn.Dense(2, in_units=4 * (SIZE // 4) ** 2)

    def hybrid_forward(self, F, x):
        h = F.flatten(self.pool(F.relu(self.conv(x))))
        return self.fc(h), F.sigmoid(self.side(h))


def build_block(classes: int, seed: int) -> TwoHeads:
    block = TwoHeads(classes, prefix="twoheads_")
    block.initialize(ctx=mx.cpu())
    rng = np.random.default_rng(seed)
    for name, param in sorted(block.collect_params().items()):
        param.set_data(mx.nd.array(rng.normal(0.0, 0.4, param.shape), dtype="float32"))
    return block


def export_files(classes: int, seed: int, prefix: str = "model",
                 epochs=(0,)) -> dict[str, bytes]:
    """`<prefix>-symbol.json` and one `<prefix>-NNNN.params` per epoch, as export() writes.

    Epoch e's weights are those of seed + e, so a test can tell which file was loaded.
    """
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in epochs:
            block = build_block(classes, seed + epoch)
            block.hybridize()
            block(mx.nd.zeros((1, 3, SIZE, SIZE)))  # export needs one hybridized forward
            block.export(str(Path(tmp) / prefix), epoch=epoch)
        for path in Path(tmp).iterdir():
            files[path.name] = path.read_bytes()
    return files


def write_bundle(storage: Path, *, name: str = "mxtiny", labels=("cat", "dog", "bird"),
                 seed: int = 0, prefix: str = "model", epochs=(0,), version: str = "1",
                 modelext: dict | None = None, post: str = POST, extra: dict | None = None):
    """Write an `mxnet.gluon` bundle into `<storage>/models/` and return it."""
    labels = list(labels)
    files: dict = {"pre_dataprocess.py": PRE, "post_dataprocess.py": post}
    files.update(export_files(len(labels), seed, prefix, epochs))
    files.update(extra or {})
    record = DistroRecord.create(name=name, labels=labels, head="TwoHeads", bone=f"mx{seed}",
                                 impl="mxnet.gluon", version=version, modelext=modelext or "")
    return BundleStore(storage).write(record, files)


def image_array(path: Path) -> np.ndarray:
    """What the bundle's pre-processing makes of an image: 3 x SIZE x SIZE float32."""
    image = Image.open(path).convert("RGB").resize((SIZE, SIZE))
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def reference(classes: int, seed: int, batch: np.ndarray) -> list[np.ndarray]:
    """Both outputs for a batch, from a fresh raw (imperative) Gluon block on the CPU."""
    block = build_block(classes, seed)
    return [o.asnumpy() for o in block(mx.nd.array(batch, ctx=mx.cpu()))]


def expected_result(bundle, path: Path) -> dict:
    """The post-processing result the raw block gives for the image at `path`."""
    labels = bundle.record.labels
    seed = int(bundle.record.bone[len("mx"):])
    scores, aux = reference(len(labels), seed, image_array(path)[None])
    return {"path": str(path), "scores": scores[0].tolist(),
            "label": labels[int(scores[0].argmax())], "aux": aux[0].tolist()}

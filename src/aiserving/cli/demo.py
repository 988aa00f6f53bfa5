"""The demo JSM bundle: a small real CNN that tells circles, squares and triangles apart.

Made deterministically (fixed seeds) by training for a few seconds on
synthetic drawings, then written in the original bundle format:
`pytorch.structureSplit` with `model.py` (`build_structure()`), `param.pth`
(`{"state_dict": ...}`), vendor pre/post-processing and `distros.json`.
Sample images are written beside it under `<storage>/demo/`.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

from aiserving.bundle.record import DistroRecord
from aiserving.bundle.store import Bundle, BundleStore
from aiserving.errors import ModelNotFound

log = logging.getLogger(__name__)

LABELS = ["circle", "square", "triangle"]
SIZE = 32

MODEL_PY = '''\
import torch
from torch import nn


class ShapeNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build_structure():
    return ShapeNet()
'''

PRE_PY = '''\
import numpy as np
from PIL import Image


def pre_dataprocess(infer_data):
    try:
        image = Image.open(infer_data["path"]).convert("RGB").resize((32, 32))
    except OSError:
        return None
    chw = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return {"feed_list": [chw], "passby": {"path": infer_data["path"]}}
'''

POST_PY = '''\
import numpy as np


def post_dataprocess(post_frame):
    logits = np.asarray(post_frame["infers"][0], dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    return {
        "label": post_frame["labels"][best],
        "name": post_frame["mapping"][best],
        "score": round(float(probs[best]), 4),
        "confident": bool(probs[best] >= post_frame["threshold"][best]),
        "scores": {label: round(float(p), 4) for label, p in zip(post_frame["labels"], probs)},
    }
'''


def draw_shape(kind: str, rng: random.Random, size: int = SIZE):
    """One picture of a shape: random colours, position and size."""
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(0, 255) for _ in range(3))
    fg = tuple((c + rng.randint(90, 165)) % 256 for c in bg)
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return image


def train(seed: int = 0, samples: int = 3000, epochs: int = 12):
    """Train the demo network; returns its state_dict."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    namespace: dict = {}
    exec(compile(MODEL_PY, "model.py", "exec"), namespace)
    model = namespace["build_structure"]()
    xs, ys = [], []
    for n in range(samples):
        label = n % len(LABELS)
        image = draw_shape(LABELS[label], rng)
        xs.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        ys.append(label)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(samples, generator=order)
        for start in range(0, samples, 64):
            idx = perm[start:start + 64]
            optimiser.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
    model.eval()
    return model.state_dict()


def record() -> DistroRecord:
    return DistroRecord.create(name="demo-shapes", labels=LABELS, head="ShapeNet", bone="tinycnn",
                               impl="pytorch.structureSplit", version="1",
                               threshold=["0.6"] * 3, mapping=["Circle", "Square", "Triangle"])


def ensure_demo(storage: str | Path) -> tuple[Bundle, Path]:
    """The demo bundle and its sample-image folder, made on first use."""
    import torch

    store = BundleStore(storage)
    rec = record()
    samples = Path(storage) / "demo"
    try:
        bundle = store.load(rec.implhash, rec.version)
    except ModelNotFound:
        log.info("training the demo model (a few seconds, once)")
        buffer = io.BytesIO()
        torch.save({"state_dict": train()}, buffer)
        bundle = store.write(rec, {"model.py": MODEL_PY, "pre_dataprocess.py": PRE_PY,
                                   "post_dataprocess.py": POST_PY, "param.pth": buffer.getvalue()})
    samples.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    for label in LABELS:
        path = samples / f"{label}.jpg"
        if not path.exists():
            draw_shape(label, rng, 128).save(path, "JPEG", quality=95)
    return bundle, samples

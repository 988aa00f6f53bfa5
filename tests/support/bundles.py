"""Small real JSM bundles for tests: a tiny torch CNN in the original bundle format.

Weights come from a fixed seed, so a test can recompute the expected output
with plain torch (`reference`) and compare it with what the node returns.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aiserving.bundle import BundleStore, DistroRecord

MODEL_PY = textwrap.dedent('''\
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, classes={classes}, channels={channels}):
            super().__init__()
            self.conv = nn.Conv2d(channels, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(4)
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


    def build_structure():
        return Tiny()
''')

# Pre-processing: image -> 3x16x16 float32 (or 1x16x16 grey); `batch_of_one` mimics old
# bundles that returned a leading batch axis. A path containing "raise" makes it raise.
PRE_PY = textwrap.dedent('''\
    import time

    import numpy as np
    from PIL import Image

    GREY = {grey}
    BATCH_OF_ONE = {batch_of_one}
    DELAY = {delay}


    def pre_dataprocess(infer_data):
        path = infer_data["path"]
        if "raise" in path:
            raise ValueError("vendor pre-processing refused " + path)
        if DELAY:
            time.sleep(DELAY)
        image = Image.open(path).convert("L" if GREY else "RGB").resize((16, 16))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[None] if GREY else array.transpose(2, 0, 1)
        if BATCH_OF_ONE:
            array = array[None]
        return {{"feed_list": [array], "passby": {{"path": path, "uuid": infer_data["uuid"]}}}}
''')

POST_FRAME_PY = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        scores = np.asarray(post_frame["infers"][0])
        best = int(scores.argmax())
        return {"path": post_frame["passby"]["path"], "scores": scores.tolist(),
                "label": post_frame["labels"][best], "name": post_frame["mapping"][best]}
''')

POST_LEGACY_PY = textwrap.dedent('''\
    def post_dataprocess(pre_p, prediction, classes):
        scores = prediction[0]
        best = int(scores.argmax())
        return {"path": pre_p["passby"]["path"], "scores": scores.tolist(),
                "label": classes[best], "convention": "legacy"}
''')


def tiny_model(classes: int, channels: int = 3, seed: int = 0) -> torch.nn.Module:
    namespace: dict = {}
    exec(MODEL_PY.format(classes=classes, channels=channels), namespace)
    torch.manual_seed(seed)
    return namespace["build_structure"]().eval()


def write_bundle(storage: Path, *, name: str = "tiny", labels=("cat", "dog", "bird"),
                 mode: str = "structureSplit", version: str = "1", seed: int = 0,
                 grey: bool = False, batch_of_one: bool = False, delay: float = 0.0,
                 post: str = POST_FRAME_PY, modelext: dict | None = None,
                 pre: str | None = None, extra: dict | None = None):
    """Write a bundle into `<storage>/models/` and return it."""
    labels = list(labels)
    channels = 1 if grey else 3
    model = tiny_model(len(labels), channels, seed)
    files: dict = {
        "pre_dataprocess.py": pre or PRE_PY.format(grey=grey, batch_of_one=batch_of_one, delay=delay),
        "post_dataprocess.py": post,
    }
    buffer = io.BytesIO()
    if mode == "structureSplit":
        files["model.py"] = MODEL_PY.format(classes=len(labels), channels=channels)
        torch.save({"state_dict": model.state_dict()}, buffer)
        files["param.pth"] = buffer.getvalue()
    else:
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, channels, 16, 16)), buffer)
        files["model_core"] = buffer.getvalue()
    files.update(extra or {})
    record = DistroRecord.create(name=name, labels=labels, head="Tiny", bone=f"conv{seed}",
                                 impl=f"pytorch.{mode}", version=version,
                                 modelext=modelext or "")
    return BundleStore(storage).write(record, files)


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    """A distinct PNG (lossless, so the reference sees exactly the node's pixels)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
    return path


def reference(bundle, image_path: Path, grey: bool = False) -> list[float]:
    """The bundle's scores for one image, computed with plain torch."""
    labels = bundle.record.labels
    seed = int(bundle.record.bone[len("conv"):])
    model = tiny_model(len(labels), 1 if grey else 3, seed)
    image = Image.open(image_path).convert("L" if grey else "RGB").resize((16, 16))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if grey else array.transpose(2, 0, 1)
    with torch.no_grad():
        return model(torch.from_numpy(array[None]))[0].tolist()


def checked_results(bundle, images: list[Path], answers) -> list[dict]:
    """The JSON bodies of `/detect` answers, one per image, each checked: 200, the
    image's own path, plain torch's scores for it."""
    bodies = []
    for path, answer in zip(images, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["result"]["path"] == str(path)
        np.testing.assert_allclose(body["result"]["scores"], reference(bundle, path), rtol=1e-4,
                                   atol=1e-5)
        bodies.append(body)
    return bodies


def expected_result(bundle, image_path: Path) -> dict:
    """What POST_FRAME_PY answers for one image: plain torch's scores, best label and name."""
    scores = reference(bundle, image_path)
    best = max(range(len(scores)), key=scores.__getitem__)
    return {"path": str(image_path), "scores": scores, "label": bundle.record.labels[best],
            "name": bundle.record.mapping[best]}

"""The batch path without redis: real vendor code, a real torch backend."""

import textwrap

import numpy as np
import pytest

from aiserving.backends import create_backend
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import InputError, ProcessingError
from aiserving.inference.pipeline import Item, Pipeline
from tests.support.bundles import POST_LEGACY_PY, reference, write_bundle, write_image

SETTINGS = {"be.trpy.device": "cpu", "be.trpy.mixed_mode": False}


def pipeline_for(bundle) -> Pipeline:
    backend = create_backend("pytorch", SETTINGS)
    backend.load(bundle)
    return Pipeline(bundle, VendorCode.load(bundle), backend)


@pytest.fixture
def images(tmp_path):
    return [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(5)]


@pytest.mark.parametrize("kw", [
    {}, {"batch_of_one": True}, {"grey": True}, {"grey": True, "batch_of_one": True},
    {"post": POST_LEGACY_PY}, {"mode": "structureEmbed"},
])
def test_batch_results_match_plain_torch(storage, images, kw):
    bundle = write_bundle(storage, **kw)
    items = [Item({"uuid": str(n), "path": str(p)}) for n, p in enumerate(images)]
    timings = pipeline_for(bundle).run(items)
    assert timings.items == 5 and timings.failed == 0
    for item, path in zip(items, images):
        assert item.error is None, item.error
        assert item.result["path"] == str(path)
        np.testing.assert_allclose(item.result["scores"], reference(bundle, path, kw.get("grey", False)),
                                   rtol=1e-4, atol=1e-5)
    if kw.get("post") is POST_LEGACY_PY:
        assert items[0].result["convention"] == "legacy"


def test_a_single_channel_input_keeps_its_channel_axis(storage, images):
    # 1x16x16 per item must become a 5x1x16x16 batch, not 5x16x16 (the old squeeze bug).
    bundle = write_bundle(storage, grey=True)
    pipeline = pipeline_for(bundle)
    items = [Item({"uuid": "a", "path": str(images[0])})]
    pipeline.run(items)
    assert items[0].error is None, items[0].error


def test_one_bad_item_fails_alone(storage, images, tmp_path):
    bundle = write_bundle(storage)
    not_image = tmp_path / "raise-me.png"
    not_image.write_bytes(b"junk")
    items = [Item({"uuid": "0", "path": str(images[0])}),
             Item({"uuid": "1", "path": str(not_image)}),
             Item({"uuid": "2", "path": str(images[1])})]
    timings = pipeline_for(bundle).run(items)
    assert timings.failed == 1
    assert isinstance(items[1].error, ProcessingError)
    assert "ValueError: vendor pre-processing refused" in items[1].error.message
    assert items[0].result["path"] == str(images[0])
    assert items[2].result["path"] == str(images[1])


def test_none_from_pre_is_an_input_error(storage, images):
    pre = "def pre_dataprocess(infer_data):\n    return None\n"
    bundle = write_bundle(storage, pre=pre)
    items = [Item({"uuid": "0", "path": str(images[0])})]
    pipeline_for(bundle).run(items)
    assert isinstance(items[0].error, InputError)


def test_shared_input_is_taken_once_per_batch(storage, images):
    # input_type "0": one value per batch (an is_train flag), taken from the first item.
    model_py = textwrap.dedent('''\
        import torch

        class Scale(torch.nn.Module):
            def forward(self, x, factor):
                return x.flatten(1)[:, :3] * factor

        def build_structure():
            return Scale()
    ''')
    pre = textwrap.dedent('''\
        import numpy as np

        def pre_dataprocess(infer_data):
            value = float(infer_data["uuid"])
            return {"feed_list": [np.full((2, 2), value, np.float32), np.float32(10 + value)]}
    ''')
    post = "def post_dataprocess(f):\n    return {'out': f['infers'][0].tolist()}\n"
    bundle = write_bundle(storage, pre=pre, post=post,
                          modelext={"tensors": {"input_type": ["1", "0"]}},
                          extra={"model.py": model_py, "param.pth": _empty_state()})
    items = [Item({"uuid": str(n), "path": "-"}) for n in (1, 2, 3)]
    pipeline_for(bundle).run(items)
    assert [i.result["out"] for i in items] == [[11.0] * 3, [22.0] * 3, [33.0] * 3]


def test_items_whose_shapes_differ_run_one_by_one(storage, tmp_path):
    pre = textwrap.dedent('''\
        import numpy as np

        def pre_dataprocess(infer_data):
            n = int(infer_data["uuid"])
            return {"feed_list": [np.ones((3, 8 + 4 * n, 8), np.float32)]}
    ''')
    post = "def post_dataprocess(f):\n    return {'n': len(f['infers'][0])}\n"
    bundle = write_bundle(storage, pre=pre, post=post)
    items = [Item({"uuid": str(n), "path": "-"}) for n in range(3)]
    pipeline_for(bundle).run(items)
    assert [i.error for i in items] == [None, None, None]
    assert [i.result["n"] for i in items] == [3, 3, 3]


def _empty_state() -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {}}, buffer)
    return buffer.getvalue()

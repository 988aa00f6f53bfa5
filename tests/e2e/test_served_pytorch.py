"""PyTorch bundles served through REST and gRPC equal plain torch, at batch 1 and 8."""

import pytest

from tests.support.bundles import POST_FRAME_PY, expected_result, write_bundle, write_image
from tests.support.served import check_served


@pytest.mark.parametrize("mode", ["structureSplit", "structureEmbed"])
def test_served_results_equal_plain_torch(storage, tmp_path, start_node, mode):
    bundle = write_bundle(storage, mode=mode, seed=5, post=POST_FRAME_PY)
    images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(6)]
    node = start_node(storage, args=["--profile"])
    # InferenceRemote hands the bundle a private temp file: its "path" differs.
    check_served(node, bundle, images, lambda path: expected_result(bundle, path),
                 path_keys=("path",))

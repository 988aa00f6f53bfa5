"""RKNN bundles served through REST and gRPC equal the raw RKNNLite, at batch 1 and 8.

The node finds rknnlite as tests.support.rknn_models decides: the stand-in here
(through PYTHONPATH), the real one on a board (AISRV_TEST_REAL_RKNN=1).
"""

import json

import pytest

from tests.support import rknn_models as rm
from tests.support.bundles import write_image
from tests.support.grpc_client import Client
from tests.support.node import NodeProcess
from tests.support.served import assert_close, check_served

pytestmark = pytest.mark.rknn_hw


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rknn")
    storage = root / "storage"
    m = rm.model(root, seed=4)
    good = rm.write_bundle(storage, m, name="rkgood")
    rm.write_bundle(storage, m, name="rkbroken", core=b"not an rknn model")
    images = [write_image(root / f"img{n}.png", seed=n) for n in range(6)]
    env = rm.node_env()
    if not rm.REAL:  # on a board, the board's own settings apply
        env.update({"AISRV_BE_RKNNPY_TARGET": "rk3588", "AISRV_BE_RKNNPY_CORE_MASK": "0_1_2"})
    node = NodeProcess(storage, args=["--profile"], env=env).start()
    yield {"node": node, "model": m, "good": good, "images": images}
    node.stop()


def expected(world, path):
    return rm.expected_result(world["model"], world["good"].record.labels, path)


def test_served_results_equal_the_raw_runtime(world):
    # InferenceRemote hands the bundle a private temp file: its "path" differs.
    check_served(world["node"], world["good"], world["images"], lambda p: expected(world, p),
                 path_keys=("path",))
    if not rm.REAL:
        assert "on npu:0_1_2, batch size 8" in world["node"].log()


def test_rknn_is_a_supported_type(world):
    client = Client(world["node"])
    try:
        assert "rknn" in json.loads(client.backend.ListSupportedType(client.ping()).support)
    finally:
        client.close()


def test_a_load_failure_is_reported_and_the_node_keeps_serving(world):
    node, image = world["node"], world["images"][0]
    good = node.switch(btype="rknn", model="rkgood")
    node.wait_switch(bid=good)
    broken = node.switch(btype="rknn", model="rkbroken")
    seen = node.wait_switch(bid=broken, until=("failed",))
    assert seen[-1]["model"] == "rkbroken"
    assert "RKNNLite.init_runtime(" in seen[-1]["error"]
    assert "returned -1: model_core is not a .rknn model" in seen[-1]["error"]
    body = node.detect(image, bid=good).json()
    assert body["status"] == "success", body
    assert_close(body["result"], expected(world, image))

"""MXNet bundles served through REST and gRPC equal the raw Gluon block, at batch 1 and 8."""

import json

import pytest

from tests.support.bundles import write_image
from tests.support.grpc_client import Client
from tests.support.mxnet_models import expected_result, write_bundle
from tests.support.node import NodeProcess
from tests.support.served import assert_close, check_served


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mxnet")
    storage = root / "storage"
    good = write_bundle(storage, name="mxgood", seed=5)
    broken = write_bundle(storage, name="mxbroken", seed=6)
    (broken.path / "model-0000.params").write_bytes(b"not an NDArray file")
    images = [write_image(root / f"img{n}.png", seed=n) for n in range(6)]
    node = NodeProcess(storage, args=["--profile"]).start()
    yield {"node": node, "good": good, "images": images}
    node.stop()


def test_served_results_equal_the_raw_block(world):
    bundle = world["good"]
    # InferenceRemote hands the bundle a private temp file: its "path" differs.
    check_served(world["node"], bundle, world["images"], lambda p: expected_result(bundle, p),
                 path_keys=("path",))


def test_mxnet_is_a_supported_type(world):
    client = Client(world["node"])
    try:
        assert "mxnet" in json.loads(client.backend.ListSupportedType(client.ping()).support)
    finally:
        client.close()


def test_a_load_failure_is_reported_and_the_node_keeps_serving(world):
    node, image = world["node"], world["images"][0]
    good = node.switch(btype="mxnet", model="mxgood")
    node.wait_switch(bid=good)
    broken = node.switch(btype="mxnet", model="mxbroken")
    seen = node.wait_switch(bid=broken, until=("failed",))
    assert seen[-1]["model"] == "mxbroken"
    assert "model-0000.params cannot be loaded" in seen[-1]["error"]
    assert "Invalid NDArray file format" in seen[-1]["error"]
    body = node.detect(image, bid=good).json()
    assert body["status"] == "success", body
    assert_close(body["result"], expected_result(world["good"], image))

"""ONNX bundles served through REST and gRPC equal plain onnxruntime, at batch 1 and 8.

One node serves the module: a model with a dynamic batch axis ("N"), one with
a batch axis fixed at 1 (run item by item), and a bundle whose model_core is
garbage (its load fails while the node keeps serving).
"""

import json

import pytest

from tests.support.grpc_client import Client
from tests.support.node import NodeProcess
from tests.support.onnx_models import reference, write_bundle, write_images
from tests.support.served import assert_close, check_served


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    storage = root / "storage"
    bundles = {
        "dynamic": write_bundle(storage, "dynamic", seed=11),
        "fixed": write_bundle(storage, "fixed", seed=12),
        "garbage": write_bundle(storage, "dynamic", seed=13, name="onnx-garbage",
                                model_core=b"\x08\x07 this is no protobuf" * 8),
    }
    images = write_images(root, 6)
    node = NodeProcess(storage, args=["--profile"]).start()
    yield {"node": node, "images": images, **bundles}
    node.stop()


def test_the_node_lists_the_type(world):
    client = Client(world["node"])
    try:
        supported = json.loads(client.backend.ListSupportedType(client.ping()).support)
    finally:
        client.close()
    assert "onnx" in supported


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_served_results_equal_onnxruntime(world, kind):
    bundle = world[kind]
    # InferenceRemote hands the bundle a private temp file: its "path" differs.
    check_served(world["node"], bundle, world["images"], lambda p: reference(bundle, p),
                 path_keys=("path",))
    log = world["node"].log()
    assert f"bundle {bundle.fullhash}: onnxruntime" in log
    fixed_line = f"bundle {bundle.fullhash}: the batch axis is fixed at 1: batches run item by item"
    assert (fixed_line in log) == (kind == "fixed")


def test_a_garbage_model_fails_to_load_and_the_node_keeps_serving(world):
    node, good = world["node"], world["dynamic"]
    bid = node.switch(btype="onnx", model=good.fullhash)
    assert node.wait_switch(bid=bid)[-1]["status"] == "loaded"
    bad = node.switch(btype="onnx", model=world["garbage"].fullhash)
    last = node.wait_switch(bid=bad, until=("failed",))[-1]
    assert last["model"] == "onnx-garbage"
    assert "model_core is not an ONNX model" in last["error"]
    assert "Traceback" not in last["error"]
    path = world["images"][0]
    answer = node.detect(path, bid=bid)
    assert answer.status_code == 200, answer.text
    assert_close(answer.json()["result"], reference(good, path))

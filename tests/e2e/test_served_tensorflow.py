"""TensorFlow bundles served through REST and gRPC equal raw TensorFlow, at batch 1 and 8.

One node for the module: the frozen GraphDef and the old-layout SavedModel
(`model_core` = saved_model.pb, `variables/` beside it) are each checked by
`check_served`; a bundle whose model_core is garbage fails to load while the
good model keeps serving.
"""

import json

import pytest

from tests.support.grpc_client import Client
from tests.support.served import assert_close, check_served
from tests.support.tf_models import write_frozen, write_image, write_unfrozen


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("tf")
    storage = root / "storage"
    storage.mkdir()
    frozen = write_frozen(storage, seed=1, is_train=False, batch_of_one=True)
    unfrozen = write_unfrozen(storage, root, layout="old", seed=2, is_train=True)
    broken = write_unfrozen(storage, root, layout="old", seed=3, name="tf-broken")
    (broken.bundle.path / "model_core").write_bytes(b"\xffthis is no SavedModel" * 20)
    images = [write_image(root / f"img{n}.png", seed=n) for n in range(4)]
    node = NodeProcess(storage, args=["--profile"]).start()
    yield {"node": node, "frozen": frozen, "unfrozen": unfrozen, "broken": broken,
           "images": images}
    node.stop()


def test_tensorflow_is_a_supported_type(world):
    client = Client(world["node"])
    try:
        reply = client.backend.ListSupportedType(Client.ping())
    finally:
        client.close()
    assert "tensorflow" in json.loads(reply.support)


@pytest.mark.parametrize("which", ["frozen", "unfrozen"])
def test_served_results_equal_raw_tensorflow(world, which):
    model = world[which]
    # InferenceRemote hands the bundle a private temp file: its "path" differs.
    check_served(world["node"], model.bundle, world["images"], model.reference,
                 path_keys=("path",))


def test_garbage_model_core_fails_and_the_good_model_keeps_serving(world):
    node, good, broken = world["node"], world["frozen"], world["broken"]
    bid = node.switch(btype="tensorflow", model=good.bundle.fullhash, mode="frozen")
    node.wait_switch(bid=bid, until=("loaded",), timeout=180)
    node.switch(bid=bid, model=broken.bundle.fullhash)
    seen = node.wait_switch(bid=bid, until=("failed",), timeout=180)
    assert seen[-1]["model"] == "tf-broken"
    assert "model_core is not a SavedModel's saved_model.pb" in seen[-1]["error"]
    image = world["images"][1]
    body = node.detect(image, bid=bid).json()
    assert body["status"] == "success", body
    assert_close(body["result"], good.reference(image), where="after the failed load")

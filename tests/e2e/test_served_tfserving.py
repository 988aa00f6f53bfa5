"""tensorflow-serving bundles served by a node through a stand-in TF Serving, both adapters.

The stand-in runs in this process and computes a real SavedModel; the node's
inference process reaches it over loopback TCP, as it would a real server.
"""

import pytest

from tests.support import tfserving_models as tm
from tests.support.bundles import write_image
from tests.support.served import assert_close, check_served
from tests.support.tfserving_standin import TFServingStandIn


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tm.export_models(tmp_path_factory.mktemp("tfserving") / "tiny")
    standin = TFServingStandIn(models, "tiny").start()  # serves the newest version, 10
    yield standin
    standin.stop()


@pytest.mark.parametrize("adapter", ["restful", "grpc"])
def test_served_results_equal_tensorflow_and_survive_a_server_restart(server, storage, tmp_path,
                                                                      start_node, adapter):
    bundle = tm.write_bundle(storage, "tiny")
    inputs = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(6)]
    port = server.rest_port if adapter == "restful" else server.grpc_port
    node = start_node(storage, args=["--profile"], env={
        "AISRV_BE_TFSRV_HOST": "127.0.0.1", "AISRV_BE_TFSRV_ADAPTER": adapter,
        "AISRV_BE_TFSRV_REST_PORT": str(server.rest_port),
        "AISRV_BE_TFSRV_GRPC_PORT": str(server.grpc_port)})
    expected = lambda path: tm.expected(server.base, 10, path)  # noqa: E731
    check_served(node, bundle, inputs, expected, path_keys=("path",))
    assert {call[0] for call in server.calls} >= {adapter}

    bid = node.switch(btype="tensorflow-serving", model=bundle.fullhash)
    node.wait_switch(bid)
    server.stop()
    try:
        down = node.detect(inputs[0], bid=bid)
        assert down.status_code == 500, down.text
        body = down.json()
        assert body["status"] == "failed"
        assert f"TensorFlow Serving at 127.0.0.1:{port} cannot be reached" in body["message"]
        assert "model 'tiny'" in body["message"] and "Traceback" not in body["message"]
    finally:
        server.start()
    back = node.detect(inputs[1], bid=bid)
    assert back.status_code == 200, back.text
    assert_close(back.json()["result"], expected(inputs[1]), rtol=1e-4, atol=1e-5)

    if adapter == "restful":  # a bundle that does not fit the served model fails alone
        bad = tm.write_bundle(storage, "tiny", bone="misnamed",
                              modelext={"tensors": {"input": ["picture", "gain"]}})
        bad_bid = node.switch(btype="tensorflow-serving", model=bad.fullhash)
        seen = node.wait_switch(bad_bid, until=("failed",))
        assert f"bundle {bad.fullhash}" in seen[-1]["error"]
        assert "modelext tensors.input ['picture', 'gain'] does not match" in seen[-1]["error"]
        assert node.detect(inputs[2], bid=bid).status_code == 200  # the node stays up

"""`auth.admin_addresses`: management calls only from peers inside the listed networks
(403 / PERMISSION_DENIED, judged by the socket's peer, never X-Forwarded-For), with
inference untouched; together with an admin token, both must pass."""

import time

import grpc
import pytest

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import (Client, backend_pb2, common_pb2, exchange_pb2,
                                       inference_pb2, model_info)
from tests.support.node import NodeProcess

ADMIN = "admin-token-5e1d"
SWITCH = "/api/v1alpha/switch"


def start(root, addresses, **env):
    bundle = write_bundle(root / "storage", name="tiny", seed=2)
    node = NodeProcess(root / "storage", env={"AISRV_AUTH_ADMIN_ADDRESSES": addresses,
                                              "AISRV_AUTOLOAD": "tiny", **env}).start()
    node.bundle = bundle
    node.image = write_image(root / "a.png", seed=4)
    return node


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """Management only from 10.0.0.0/8: the tests' 127.0.0.1 is outside."""
    node = start(tmp_path_factory.mktemp("elsewhere"), "10.0.0.0/8")
    yield node
    node.stop()


def detect_when_running(node, **kwargs):
    for _ in range(600):
        answer = node.detect(node.image, **kwargs)
        if answer.status_code != 503:
            return answer
        time.sleep(0.05)
    return answer


def test_rest_management_refused_outside_the_list_inference_served(elsewhere):
    refused = elsewhere.post(SWITCH, {"btype": "pytorch", "model": "tiny"})
    assert refused.status_code == 403
    assert "auth.admin_addresses" in refused.json()["message"]
    assert "127.0.0.1" in refused.json()["message"]
    spoofed = elsewhere.post(SWITCH, {"btype": "pytorch", "model": "tiny"},
                             headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3",
                                      "Forwarded": "for=10.1.2.3"})
    assert spoofed.status_code == 403  # a header claims nothing
    assert elsewhere.get(SWITCH).status_code == 200  # reading state is no management
    answer = detect_when_running(elsewhere)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["label"] in elsewhere.bundle.record.labels


def test_grpc_management_refused_outside_the_list_inference_served(elsewhere):
    client = Client(elsewhere)
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.x"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "auth.admin_addresses" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.model.DeleteModel(model_info(elsewhere.bundle.record))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert elsewhere.bundle.path.exists()
        with pytest.raises(grpc.RpcError) as err:  # streaming both ways
            client.upload(b"x" * 100)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        uploads = elsewhere.storage / "run" / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())
        with pytest.raises(grpc.RpcError) as err:
            client.download(elsewhere.bundle.record.implhash)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        assert client.connectivity.Ping(common_pb2.PingRequest(client="t")).version
        running = client.backend.ListRunningBackends(common_pb2.PingRequest(client="t"))
        bid = running.backends[0].info.bid
        client.wait_running(bid)
        reply = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=bid, uuid="addr-local", path=str(elsewhere.image)))
        assert reply.code == 0, reply.msg
        assert client.wait_result("addr-local")["label"] in elsewhere.bundle.record.labels
    finally:
        client.close()


def test_inside_the_list_management_works_and_the_token_is_still_needed(tmp_path):
    node = start(tmp_path, "127.0.0.1, ::1", AISRV_AUTH_ADMIN_TOKEN=ADMIN)
    client = Client(node)
    try:
        body = {"btype": "pytorch", "model": "tiny"}
        assert node.post(SWITCH, body).status_code == 401  # the address alone is not enough
        made = node.post(SWITCH, body, headers={"Authorization": f"Bearer {ADMIN}"})
        assert made.status_code == 200, made.text
        answer = detect_when_running(node)  # an admin token alone leaves inference open
        assert answer.status_code == 200, answer.text

        with pytest.raises(grpc.RpcError) as err:
            client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.x"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        admin = [("authorization", f"Bearer {ADMIN}")]
        created = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.x"),
                                                   metadata=admin)
        assert created.code == 0, created.msg
        assert client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=created.msg),
                                               metadata=admin).code == 0
        answers = list(client.exchange.UploadBin(iter([exchange_pb2.BinData(
            pack=exchange_pb2.Block(index=0, block=b"abc"))]), metadata=admin))
        assert answers[-1].uuid not in ("", "-1")
    finally:
        client.close()
        node.stop()

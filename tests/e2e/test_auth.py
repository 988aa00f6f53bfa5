"""Tokens at both doors: every call but /healthz needs the token, management calls the
admin token; without a token the node answers 401 / UNAUTHENTICATED and does nothing."""

import time

import grpc
import pytest
import requests

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import (Client, backend_pb2, common_pb2, exchange_pb2,
                                       inference_pb2)
from tests.support.node import NodeProcess

TOKEN, ADMIN = "user-token-3f9a", "admin-token-77c1"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    write_bundle(root / "storage", name="tiny", seed=1)
    node = NodeProcess(root / "storage", env={"AISRV_AUTH_TOKEN": TOKEN,
                                              "AISRV_AUTH_ADMIN_TOKEN": ADMIN}).start()
    node.image = write_image(root / "a.png", seed=1)
    yield node
    node.stop()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_rest_needs_the_token_and_management_the_admin_token(node):
    assert requests.get(node.base + "/healthz", timeout=10).status_code == 200  # probes
    refused = requests.get(node.base + "/readyz", timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(node.base + "/readyz", headers=bearer("wrong"), timeout=10).status_code == 401
    assert requests.get(node.base + "/readyz", headers=bearer(TOKEN), timeout=10).status_code == 503
    switch = {"btype": "pytorch", "model": "tiny"}
    plain = requests.post(node.base + "/api/v1alpha/switch", json=switch, headers=bearer(TOKEN),
                          timeout=30)
    assert plain.status_code == 401 and "admin token" in plain.json()["message"]
    made = requests.post(node.base + "/api/v1alpha/switch", json=switch, headers=bearer(ADMIN),
                         timeout=30)
    assert made.status_code == 200, made.text
    detect = {"path": str(node.image)}
    for _ in range(600):  # until the model runs
        answer = requests.post(node.base + "/api/v1alpha/detect", json=detect,
                               headers=bearer(TOKEN), timeout=30)
        if answer.status_code != 503:
            break
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    nobody = requests.post(node.base + "/api/v1alpha/detect", json=detect, timeout=30)
    assert nobody.status_code == 401 and nobody.json()["status"] == "failed"


def test_grpc_needs_the_token_and_management_the_admin_token(node):
    client = Client(node)
    ping = common_pb2.PingRequest(client="test")
    with pytest.raises(grpc.RpcError) as err:
        client.connectivity.Ping(ping)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    user, admin = [("authorization", f"Bearer {TOKEN}")], [("authorization", f"Bearer {ADMIN}")]
    assert client.connectivity.Ping(ping, metadata=user).version
    with pytest.raises(grpc.RpcError) as err:
        client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.x"), metadata=user)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in err.value.details()
    made = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.x"),
                                            metadata=admin)
    assert made.code == 0
    assert client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=made.msg),
                                           metadata=admin).code == 0
    with pytest.raises(grpc.RpcError) as err:  # a streaming rpc is guarded too
        list(client.exchange.UploadBin(iter([exchange_pb2.BinData()]), metadata=user))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid="0", uuid="u1", path=str(node.image)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = client.inference.InferenceLocal(inference_pb2.InferRequest(
        bid="99", uuid="u1", path=str(node.image)), metadata=user)
    assert reply.code == 110  # through the door: the rpc itself answered
    client.close()


def test_the_fleet_reads_need_the_token(node):
    from aiserving.api.grpc.generated import fleet_pb2, fleet_pb2_grpc

    url = node.base + "/api/v1alpha/nodes"
    assert requests.get(url, timeout=10).status_code == 401
    listed = requests.get(url, headers=bearer(TOKEN), timeout=10)
    assert listed.status_code == 200 and [n["name"] for n in listed.json()["nodes"]] == \
        [f"test{node.port}"]
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        fleet = fleet_pb2_grpc.FleetStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=10,
                                metadata=[("authorization", f"Bearer {TOKEN}")])
        assert [n.name for n in reply.nodes] == [f"test{node.port}"]


def test_a_peer_guessing_tokens_is_logged_and_stopped(tmp_path, start_node):
    write_bundle(tmp_path / "storage", name="tiny", seed=1)
    node = start_node(tmp_path / "storage", env={"AISRV_AUTH_TOKEN": TOKEN,
                                                 "AISRV_AUTH_MAX_FAILURES": "3"})
    for guess in ("a", "b", "c"):
        assert node.get("/readyz", headers=bearer(guess)).status_code == 401
    stopped = node.get("/readyz", headers=bearer(TOKEN))  # even the right one, for a while
    assert stopped.status_code == 429, stopped.text
    assert "auth.max_failures" in stopped.json()["message"]
    assert 1 <= int(stopped.headers["Retry-After"]) <= 61
    client = Client(node)
    try:
        for guess in ("a", "b", "c"):
            with pytest.raises(grpc.RpcError) as refused:
                client.connectivity.Ping(client.ping(), metadata=[("authorization",
                                                                  f"Bearer {guess}")])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as stopped_grpc:
            client.connectivity.Ping(client.ping(), metadata=[("authorization",
                                                              f"Bearer {TOKEN}")])
        assert stopped_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        client.close()
    log = node.log()
    assert "authentication failed from 127.0.0.1: GET /readyz" in log
    assert "authentication failed from 127.0.0.1: /trueno.Connectivity/Ping" in log

"""gRPC byte limits: `grpc.max_message_bytes` (RESOURCE_EXHAUSTED, node fine), one upload's
bytes (`upload.max_bytes`), all uploads held at once (`upload.max_total_bytes`): a refused
upload answers "-1" then RESOURCE_EXHAUSTED and leaves nothing behind; uploads past
`upload.ttl_s` are gone."""

import base64
import os
import time

import grpc
import pytest

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import (Client, common_pb2, exchange_pb2, inference_pb2,
                                       model_info)
from tests.support.node import NodeProcess

MiB = 1024 * 1024
CHUNK = 2 * MiB


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    bundle = write_bundle(root / "storage", name="tiny", seed=6)
    node = NodeProcess(root / "storage", env={
        "AISRV_GRPC_MAX_MESSAGE_BYTES": str(3 * MiB), "AISRV_UPLOAD_MAX_BYTES": str(4 * MiB),
        "AISRV_UPLOAD_MAX_TOTAL_BYTES": str(6 * MiB), "AISRV_UPLOAD_TTL_S": "60",
        "AISRV_AUTOLOAD": "tiny"}).start()
    client = Client(node)
    yield {"node": node, "client": client, "bundle": bundle,
           "image": write_image(root / "a.png", seed=8),
           "uploads": node.storage / "run" / "uploads"}
    client.close()
    node.stop()


def upload(client, data: bytes):
    """UploadBin in 2 MiB chunks: (every answer's uuid, the final status code)."""
    def chunks():
        for index, start in enumerate(range(0, len(data), CHUNK)):
            yield exchange_pb2.BinData(pack=exchange_pb2.Block(index=index,
                                                               block=data[start:start + CHUNK]))
    answers, code = [], grpc.StatusCode.OK
    call = client.exchange.UploadBin(chunks())
    try:
        for answer in call:
            answers.append(answer.uuid)
    except grpc.RpcError as err:
        code = err.code()
        assert "upload.max" in err.details()
    return answers, code


def held(env):
    return sorted(p.name for p in env["uploads"].iterdir())


def test_a_too_large_message_is_refused_and_the_node_serves_on(env):
    c = env["client"]
    huge = base64.b64encode(os.urandom(3 * MiB)).decode()  # 4 MiB of base64
    with pytest.raises(grpc.RpcError) as err:
        c.inference.InferenceRemote(inference_pb2.InferRequest(
            bid="0", uuid="huge", type="jpg", base64=huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.connectivity.Ping(common_pb2.PingRequest(client="t")).version
    bid = c.backend.ListRunningBackends(common_pb2.PingRequest(client="t")).backends[0].info.bid
    c.wait_running(bid)
    reply = c.inference.InferenceRemote(inference_pb2.InferRequest(
        bid=bid, uuid="small", type="png",
        base64=base64.b64encode(env["image"].read_bytes()).decode()))
    assert reply.code == 0, reply.msg
    assert c.wait_result("small")["label"] in env["bundle"].record.labels


def test_one_upload_over_its_limit_is_refused_and_removed(env):
    answers, code = upload(env["client"], b"a" * (5 * MiB))  # chunks of 2, 2, 1 MiB
    assert answers[-1] == "-1" and len(answers) == 3 and code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert held(env) == []  # nothing half-written


def test_uploads_held_at_once_are_bounded(env):
    c = env["client"]
    first, code = upload(c, b"b" * (4 * MiB))
    assert code == grpc.StatusCode.OK and first[-1] != "-1"
    assert held(env) == [first[-1]]
    second, code = upload(c, b"c" * (3 * MiB))  # 4 + 2 fits in 6, 4 + 3 does not
    assert second[-1] == "-1" and code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert held(env) == [first[-1]]  # the refused one left nothing; the first is intact
    assert (env["uploads"] / first[-1]).read_bytes() == b"b" * (4 * MiB)
    # An import uses the first (this one fails: not an archive) and frees its bytes.
    record = env["bundle"].record
    imported = c.model.ImportModelDistro(model_info(record, bundle=first[-1], version="7"))
    assert imported.code == 104
    assert held(env) == []
    again, code = upload(c, b"c" * (3 * MiB))
    assert code == grpc.StatusCode.OK and again[-1] != "-1"
    os.unlink(env["uploads"] / again[-1])


def test_uploads_past_their_lifetime_are_gone(env):
    c = env["client"]
    old, code = upload(c, b"d" * 100)
    assert code == grpc.StatusCode.OK
    path = env["uploads"] / old[-1]
    long_ago = time.time() - 61  # older than upload.ttl_s
    os.utime(path, (long_ago, long_ago))
    record = env["bundle"].record
    late = c.model.ImportModelDistro(model_info(record, bundle=old[-1], version="8"))
    assert late.code == 104 and "no upload" in late.msg  # expired, even before a sweep

    aged, code = upload(c, b"e" * 100)
    os.utime(env["uploads"] / aged[-1], (long_ago, long_ago))
    deadline = time.monotonic() + 60
    while (env["uploads"] / aged[-1]).exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the sweeper runs every ttl/4 (15 s) without any new upload
    assert not (env["uploads"] / aged[-1]).exists()
    assert held(env) == []

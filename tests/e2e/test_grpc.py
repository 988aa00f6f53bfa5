"""The legacy gRPC API, rpc by rpc, against a node started as a subprocess."""

import base64
import json

import grpc
import numpy as np
import pytest

from aiserving import __version__
from tests.support.bundles import reference, write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info, model_pb2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("grpc")
    storage = root / "storage"
    alpha = write_bundle(storage, name="alpha", labels=["cat", "dog", "bird"], seed=1)
    beta = write_bundle(storage, name="beta", labels=["red", "green"], seed=2)
    broken = write_bundle(storage, name="broken", labels=["x", "y"], seed=3)
    (broken.path / "param.pth").write_bytes(b"not weights")
    node = NodeProcess(storage, env={"AISRV_BACKEND_MAX_COUNT": "4"}).start()
    client = Client(node)
    yield {"node": node, "client": client, "alpha": alpha, "beta": beta, "broken": broken,
           "root": root, "image": write_image(root / "img.png", seed=11)}
    client.close()
    node.stop()


def ping():
    return Client.ping()


def test_connectivity(env):
    c = env["client"]
    assert c.connectivity.Ping(ping()).version == __version__
    res = c.connectivity.ListNodeResources(ping())
    for value in (res.cpu, res.mem, res.dsk):
        assert 0.0 <= float(value) <= 100.0
    assert res.gpu == "N/A"  # no GPU on this machine


def test_list_supported_type(env):
    assert "pytorch" in json.loads(env["client"].backend.ListSupportedType(ping()).support)


def test_initialize_reload_list_terminate(env):
    c, alpha = env["client"], env["alpha"]
    made = c.backend.InitializeBackend(backend_pb2.BackendInfo(impl="pytorch.structureSplit",
                                                                batchsize=4))
    assert made.code == 0
    bid = made.msg
    listed = c.backend.ListBackend(backend_pb2.BackendInfo(bid=bid))
    assert listed.info.bid == bid and listed.info.batchsize == 4
    assert json.loads(listed.status) == {"state": 1}  # initialized, no model
    reply = c.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(bid=bid, model=model_info(alpha.record)))
    assert (reply.code, reply.msg) == (0, "")
    assert c.wait_running(bid) == {"state": 6, "0": 4}
    listed = c.backend.ListBackend(backend_pb2.BackendInfo(bid=bid))
    assert listed.model.name == "alpha" and listed.model.implhash == alpha.record.implhash
    assert bid in [b.info.bid for b in c.backend.ListRunningBackends(ping()).backends]
    assert c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid)).code == 0
    assert bid not in [b.info.bid for b in c.backend.ListRunningBackends(ping()).backends]


def test_backend_error_codes(env):
    c, alpha = env["client"], env["alpha"]
    info = backend_pb2.BackendInfo
    assert c.backend.InitializeBackend(info(impl="pytorch.structureSplit", batchsize=1001)).code == 100
    assert c.backend.InitializeBackend(info(impl="pytorch.structureSplit", inferprocnum=3)).code == 100
    unknown = c.backend.InitializeBackend(info(impl="caffe.net"))
    assert unknown.code == 1 and "caffe" in unknown.msg
    deep = c.backend.InitializeBackend(info(impl="pytorch.structureSplit", backendext="[" * 50_000))
    assert deep.code == 1 and "backendext must be a JSON object" in deep.msg  # found by the fuzz
    assert c.backend.TerminateBackend(info(bid="99")).code == 108  # the old product's code
    with pytest.raises(grpc.RpcError) as err:
        c.backend.ListBackend(info(bid="99"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    bid = c.backend.InitializeBackend(info(impl="pytorch.structureSplit")).msg
    try:
        missing = model_info(alpha.record, implhash="0" * 32)
        assert c.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(bid=bid, model=missing)).code == 107
        assert c.backend.ReloadModelOnBackend(
            backend_pb2.LoadRequest(bid="99", model=model_info(alpha.record))).code == 107
        encrypted = c.backend.ReloadModelOnBackend(
            backend_pb2.LoadRequest(bid=bid, model=model_info(alpha.record), encrypted=1))
        assert encrypted.code == 107 and "encrypted" in encrypted.msg
        # backend.max_count is 4 on this node: the fifth is refused with 101
        extra = [c.backend.InitializeBackend(info(impl="pytorch.x")) for _ in range(4)]
        assert [r.code for r in extra].count(101) >= 1
    finally:
        for b in c.backend.ListRunningBackends(ping()).backends:
            c.backend.TerminateBackend(info(bid=b.info.bid))


def test_create_and_load(env):
    c, beta, broken = env["client"], env["beta"], env["broken"]
    request = backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl="pytorch.structureSplit", batchsize=2),
        model=model_info(beta.record))
    made = c.backend.CreateAndLoadModel(request)
    assert made.code == 0
    bid = made.msg
    try:
        assert c.wait_running(bid)["0"] == 4  # it waited: already running
        again = c.backend.CreateAndLoadModel(request)
        assert (again.code, again.msg) == (102, bid)
        v2 = c.backend.CreateAndLoadModelV2(backend_pb2.FullLoadRequestV2(
            backend=request.backend, model=model_pb2.ModelInfoBrief(fullhash=beta.fullhash)))
        assert (v2.code, v2.msg) == (102, bid)
        bad = c.backend.CreateAndLoadModelV2(backend_pb2.FullLoadRequestV2(
            backend=request.backend, model=model_pb2.ModelInfoBrief(fullhash="nothex-1")))
        assert bad.code == 103
        before = {b.info.bid for b in c.backend.ListRunningBackends(ping()).backends}
        failed = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
            backend=request.backend, model=model_info(broken.record)))
        assert failed.code == 106 and "param.pth" in failed.msg
        after = {b.info.bid for b in c.backend.ListRunningBackends(ping()).backends}
        assert after == before  # the backend it created was removed again
        limits = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
            backend=backend_pb2.BackendInfo(impl="pytorch.structureSplit", batchsize=5000),
            model=model_info(beta.record)))
        assert limits.code == 100
    finally:
        c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


def test_inference_local_and_remote(env):
    c, alpha, image = env["client"], env["alpha"], env["image"]
    bid = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl="pytorch.structureSplit"),
        model=model_info(alpha.record))).msg
    try:
        local = c.inference.InferenceLocal(inference_pb2.InferRequest(bid=bid, uuid="job-local",
                                                                      path=str(image)))
        assert (local.code, local.msg) == (0, "job-local")
        result = c.wait_result("job-local")
        assert result["path"] == str(image)
        np.testing.assert_allclose(result["scores"], reference(alpha, image), rtol=1e-4, atol=1e-5)

        encoded = base64.b64encode(image.read_bytes()).decode()
        remote = c.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid="job-remote", type="png", base64=encoded))
        assert remote.code == 0
        result = c.wait_result("job-remote")
        np.testing.assert_allclose(result["scores"], reference(alpha, image), rtol=1e-4, atol=1e-5)
        # Given bytes, the worker handed the bundle a private file of its own naming,
        # removed once the job was done.
        from pathlib import Path

        handed = Path(result["path"])
        assert handed != image and handed.parent == env["node"].storage / "run" / "tmp"
        assert not handed.exists()

        no_uuid = c.inference.InferenceLocal(inference_pb2.InferRequest(bid=bid, path=str(image)))
        assert no_uuid.code == 110 and "lack of data" in no_uuid.msg

        missing = c.inference.InferenceLocal(inference_pb2.InferRequest(bid=bid, uuid="m",
                                                                        path="/no/such.png"))
        assert missing.code == 110 and "no readable input file" in missing.msg
        assert c.inference.InferenceLocal(inference_pb2.InferRequest(
            bid="99", uuid="m", path=str(image))).code == 110
        garbage = c.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid="r", type="jpg", base64="!!not base64!!"))
        assert garbage.code == 111
        assert c.results.get("r") is None and c.results.get("m") is None
    finally:
        c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


def test_rest_and_grpc_share_backends(env):
    c, node = env["client"], env["node"]
    bid = node.switch(btype="pytorch", model="beta")
    node.wait_switch(bid=bid)
    try:
        listed = c.backend.ListBackend(backend_pb2.BackendInfo(bid=bid))
        assert listed.model.name == "beta" and json.loads(listed.status)["0"] == 4
        assert c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid)).code == 0
        assert node.get("/api/v1alpha/switch", params={"bid": bid}).status_code == 404
    finally:
        c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


def test_model_service_rpcs(env):
    c, alpha = env["client"], env["alpha"]
    names = {m.name for m in c.model.ListModels(ping()).models}
    assert {"alpha", "beta", "broken"} <= names
    new = model_pb2.ModelInfo(name="fresh", labels=["a", "b"], head="H", bone="B",
                              impl="pytorch.structureSplit", version="1",
                              threshold=["0.5", "0.6"], mapping=["A", "B"])
    made = c.model.CreateModel(new)
    assert made.code == 0
    implhash = made.msg.split("-")[0]
    assert c.model.CreateModel(new).code == 1  # exists: the old product's code
    uneven = model_pb2.ModelInfo(name="u", labels=["a", "b"], head="H", bone="B2",
                                 impl="pytorch.structureSplit", version="1", threshold=["0.5"],
                                 mapping=["A", "B"])
    assert c.model.CreateModel(uneven).code == 1
    listed = {m.implhash: m for m in c.model.ListModels(ping()).models}
    old_disthash = listed[implhash].disthash
    update = model_pb2.ModelInfo(implhash=implhash, version="1", threshold=["0.9", "0.8"],
                                 mapping=["Ay", "Bee"])
    changed = c.model.DistroConfig(update)
    assert changed.code == 0 and changed.msg != old_disthash
    listed = {m.implhash: m for m in c.model.ListModels(ping()).models}
    assert list(listed[implhash].mapping) == ["Ay", "Bee"] and listed[implhash].disthash == changed.msg
    assert c.model.DistroConfig(model_pb2.ModelInfo(implhash=implhash, version="1",
                                                    threshold=["0.9"], mapping=["A", "B"])).code == 112
    assert c.model.DeleteModel(model_pb2.ModelInfo(implhash=implhash, version="1")).code == 0
    assert implhash not in {m.implhash for m in c.model.ListModels(ping()).models}
    assert c.model.DeleteModel(model_pb2.ModelInfo(implhash=implhash, version="1")).code == 105
    # a model a backend runs cannot be deleted out from under it
    bid = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl="pytorch.structureSplit"), model=model_info(alpha.record))).msg
    try:
        in_use = c.model.DeleteModel(model_info(alpha.record))
        assert in_use.code == 105 and "in use" in in_use.msg
        assert alpha.path.exists()
    finally:
        c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


def test_exchange_limits(env):
    c = env["client"]
    assert c.upload(b"x" * 501, chunk=1)[-1] == "-1"  # more than 500 chunks
    big = c.upload(b"y" * (2 * 1024 * 1024 + 10), chunk=2 * 1024 * 1024 + 10)
    assert big == ["-1"]  # a chunk over 2 MiB
    ok = c.upload(b"z" * 10, chunk=4)
    assert len(ok) == 3 and len(set(ok)) == 1 and ok[0] != "-1"
    uploads = env["node"].storage / "run" / "uploads"
    assert (uploads / ok[0]).read_bytes() == b"z" * 10
    assert oct(uploads.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(grpc.RpcError) as err:
        c.download("f" * 32)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    unknown = c.model.ImportModelDistro(model_info(env["alpha"].record, bundle="0" * 32, version="9"))
    assert unknown.code == 104 and "upload" in unknown.msg


def test_import_v2_takes_the_version_from_the_fullhash(env):
    c, beta = env["client"], env["beta"]
    exported = c.model.ExportModelImage(model_info(beta.record))
    assert exported.code == 0
    data, _ = c.download(exported.msg)
    implhash = beta.record.implhash

    def brief(fullhash, upload_id):
        r = beta.record
        return model_pb2.ModelInfoBrief(
            name=r.name, labels=r.labels, head=r.head, bone=r.bone, impl=r.impl,
            fullhash=fullhash, bundle=upload_id, threshold=["0.1", "0.2"], mapping=["R", "G"])

    assert c.model.ImportModelDistroV2(brief(f"{implhash}-2", c.upload(data)[0])).code == 0
    stored = {(m.implhash, m.version): m for m in c.model.ListModels(ping()).models}
    assert list(stored[(implhash, "2")].threshold) == ["0.1", "0.2"]
    assert list(stored[(implhash, "1")].threshold) == list(beta.record.threshold)
    again = c.model.ImportModelDistroV2(brief(f"{implhash}-2", c.upload(data)[0]))
    assert again.code == 104 and "already exists" in again.msg
    assert c.model.ImportModelDistroV2(brief("not-a-fullhash", c.upload(data)[0])).code == 103
    wrong = c.model.ImportModelDistroV2(brief(f"{'0' * 32}-3", c.upload(data)[0]))
    assert wrong.code == 104 and "implhash" in wrong.msg
    assert c.model.DeleteModel(model_pb2.ModelInfo(implhash=implhash, version="2")).code == 0

"""The whole device workflow through gRPC alone, as the fleet controller drives it."""

import base64
import io
import json
import tarfile

import numpy as np

from aiserving.bundle.archive import pack_export
from tests.support.bundles import reference, write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info, model_pb2


def test_device_workflow(tmp_path, start_node):
    # What the cloud holds: an exported bundle of a model this device has never seen.
    cloud = write_bundle(tmp_path / "cloud", name="gamma", labels=["left", "right"], seed=9,
                         mode="structureEmbed")
    archive = pack_export(cloud.path, cloud.record, tmp_path / f"{cloud.record.implhash}.tar.gz")
    image = write_image(tmp_path / "frame.png", seed=21)

    node = start_node(tmp_path / "storage")
    c = Client(node)
    try:
        ping = Client.ping()
        info = model_info(cloud.record)
        assert c.model.CreateModel(info).code == 0
        answers = c.upload(archive.read_bytes(), chunk=4096)
        upload_id = answers[0]
        assert upload_id != "-1" and set(answers) == {upload_id}
        imported = c.model.ImportModelDistro(model_info(cloud.record, bundle=upload_id))
        assert imported.code == 0, imported.msg
        assert not (node.storage / "run" / "uploads" / upload_id).exists()  # removed after import

        made = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
            backend=backend_pb2.BackendInfo(impl=cloud.record.impl, batchsize=4), model=info))
        assert made.code == 0, made.msg
        bid = made.msg
        assert c.wait_running(bid)["0"] == 4

        queued = c.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid="frame-1", type="png", base64=base64.b64encode(image.read_bytes()).decode()))
        assert queued.code == 0
        result = c.wait_result("frame-1")
        assert result["label"] in ("left", "right")
        np.testing.assert_allclose(result["scores"], reference(cloud, image), rtol=1e-4, atol=1e-5)

        exported = c.model.ExportModelImage(info)
        assert (exported.code, exported.msg) == (0, cloud.record.implhash)
        data, answers = c.download(cloud.record.implhash)
        on_node = node.storage / "run" / "exports" / f"{cloud.record.implhash}.tar.gz"
        assert data == on_node.read_bytes()
        assert answers[-1].size == 0 and answers[-1].pack.block == b""
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
            configs = json.load(tar.extractfile(f"{cloud.record.implhash}/configs.json"))
        assert all(n.split("/")[0] == cloud.record.implhash for n in names)
        assert f"{cloud.record.implhash}/model_core" in names
        assert "threshold" not in configs and "disthash" not in configs

        assert c.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid)).code == 0
        assert c.model.DeleteModel(info).code == 0
        assert cloud.record.implhash not in {m.implhash for m in c.model.ListModels(ping).models}
    finally:
        c.close()


def test_malicious_archive_is_refused_through_grpc(tmp_path, start_node):
    node = start_node(tmp_path / "storage")
    c = Client(node)
    try:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in (("pkg/pre_dataprocess.py", b""), ("pkg/post_dataprocess.py", b""),
                               ("pkg/../../../escaped.txt", b"owned")):
                entry = tarfile.TarInfo(name)
                entry.size = len(data)
                tar.addfile(entry, io.BytesIO(data))
        upload_id = c.upload(buffer.getvalue())[0]
        info = model_pb2.ModelInfo(name="evil", labels=["a"], head="h", bone="b",
                                   impl="pytorch.structureSplit", version="1", threshold=["0.5"],
                                   mapping=["A"])
        from aiserving.bundle.record import implhash_of

        info.implhash = implhash_of(["a"], "h", "b", "pytorch.structureSplit")
        info.bundle = upload_id
        refused = c.model.ImportModelDistro(info)
        assert refused.code == 104 and "escaped.txt" in refused.msg
        assert not list(tmp_path.rglob("escaped.txt"))
        assert info.implhash not in {m.implhash for m in c.model.ListModels(Client.ping()).models}
    finally:
        c.close()

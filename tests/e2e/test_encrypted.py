"""Encrypted models (legacy format, contract section 5): loaded over gRPC and REST,
decrypted in memory only, giving the plain model's results; wrong keys and damaged
files are clear errors and the node keeps serving.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import bundles, encryption, onnx_models, tf_models, tflite_models
from tests.support.grpc_client import Client, backend_pb2, model_info
from tests.support.node import NodeProcess
from tests.support.served import assert_close

SECRET = b"sha256 digest of the device serial, as the vendor's tool made it"


def _encrypted_copy(plain, storage: Path, secret: bytes = SECRET, damage=None):
    """The vendor's encrypted bundle: the plain one with model_core encrypted."""
    target = storage / "models" / plain.record.implhash / plain.record.version
    shutil.copytree(plain.path, target)
    blob = encryption.encrypt((plain.path / "model_core").read_bytes(), secret)
    (target / "model_core").write_bytes(damage(blob) if damage else blob)
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("encrypted")
    plain_store, storage = root / "plain", root / "storage"
    image = bundles.write_image(root / "photo.png", seed=31)
    tf_model = tf_models.write_frozen(plain_store, seed=41)
    cases = {  # framework -> (plain bundle, expected result for the image)
        "onnx": onnx_models.write_bundle(plain_store, seed=41),
        "tflite": tflite_models.write_bundle(plain_store, seed=41),
        "torchscript": bundles.write_bundle(plain_store, mode="structureEmbed", seed=41),
        "tensorflow": tf_model.bundle,
    }
    expected = {
        "onnx": onnx_models.reference(cases["onnx"], image),
        "tflite": tflite_models.reference(cases["tflite"], image),
        "torchscript": bundles.expected_result(cases["torchscript"], image),
        "tensorflow": tf_model.reference(image),
    }
    for plain in cases.values():
        _encrypted_copy(plain, storage)
    truncated = onnx_models.write_bundle(plain_store, seed=42, name="truncated")
    _encrypted_copy(truncated, storage, damage=lambda blob: blob[:-32])
    device = encryption.device_key(root)
    other = encryption.device_key(root, "other.pem")
    node = NodeProcess(storage, env={"AISRV_BACKEND_MAX_COUNT": "8"}).start()
    client = Client(node)
    yield {"node": node, "client": client, "cases": cases, "expected": expected,
           "image": image, "device": device, "other": other, "truncated": truncated,
           "storage": storage}
    client.close()
    node.stop()


def _load(client, bundle, device, a64key=None):
    return client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=bundle.record.impl), model=model_info(bundle.record),
        encrypted=1, a64key=a64key or encryption.seal(device, SECRET), pvtkey=device.pvtkey))


@pytest.mark.parametrize("framework", ["onnx", "tflite", "torchscript", "tensorflow"])
def test_an_encrypted_model_serves_the_plain_models_results(world, framework):
    node, client = world["node"], world["client"]
    plain = world["cases"][framework]
    made = _load(client, plain, world["device"])
    assert made.code == 0, made.msg
    try:
        answer = node.detect(world["image"], bid=made.msg)
        assert answer.status_code == 200, answer.text
        assert_close(answer.json()["result"], world["expected"][framework])
        encryption.assert_no_plaintext_on_disk(node, world["storage"], [plain.path / "model_core"])
    finally:
        client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=made.msg))


def test_rest_switch_loads_an_encrypted_model(world):
    node, device = world["node"], world["device"]
    plain = world["cases"]["onnx"]
    bid = node.switch(btype="onnx", model=plain.fullhash, encrypted="1",
                      a64key=encryption.seal(device, SECRET), pvtkey=device.pvtkey)
    node.wait_switch(bid)
    try:
        assert_close(node.detect(world["image"], bid=bid).json()["result"],
                     world["expected"]["onnx"])
        refused = node.post("/api/v1alpha/switch", {"bid": bid, "model": plain.fullhash,
                                                    "encrypted": 1, "a64key": "%%%",
                                                    "pvtkey": device.pvtkey})
        assert refused.status_code == 422 and "base64" in refused.json()["message"]
    finally:
        world["client"].backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


def test_wrong_keys_and_damaged_files_are_clear_errors(world):
    node, client, device, other = world["node"], world["client"], world["device"], world["other"]
    onnx = world["cases"]["onnx"]
    before = {b.info.bid for b in client.backend.ListRunningBackends(Client.ping()).backends}
    # A key pair that does not match: the model decrypts to garbage, and says why.
    wrong = _load(client, onnx, other, a64key=encryption.seal(device, SECRET))
    assert wrong.code == 106 and "wrong a64key or pvtkey" in wrong.msg, wrong.msg
    truncated = _load(client, world["truncated"], device)
    assert truncated.code == 106 and "truncated" in truncated.msg, truncated.msg
    missing = client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=onnx.record.impl), model=model_info(onnx.record),
        encrypted=1, a64key=encryption.seal(device, SECRET), pvtkey="/no/such/key.pem"))
    assert missing.code == 106 and "cannot be read" in missing.msg
    after = {b.info.bid for b in client.backend.ListRunningBackends(Client.ping()).backends}
    assert after == before  # the backends these calls made were removed again
    # A backend serving the model keeps serving through a failed reload.
    made = _load(client, onnx, device)
    assert made.code == 0, made.msg
    try:
        reload = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
            bid=made.msg, model=model_info(onnx.record), encrypted=1, a64key="",
            pvtkey=device.pvtkey))
        assert reload.code == 107 and "a64key" in reload.msg
        assert node.detect(world["image"], bid=made.msg).status_code == 200
    finally:
        client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=made.msg))


def test_an_encrypted_model_asks_for_its_key_after_every_restart(tmp_path, start_node):
    import json

    plain = onnx_models.write_bundle(tmp_path / "plain", seed=43, name="sealedcam")
    storage = tmp_path / "storage"
    _encrypted_copy(plain, storage)
    device = encryption.device_key(tmp_path)
    node = start_node(storage)
    client = Client(node)
    made = _load(client, plain, device)
    client.close()
    assert made.code == 0, made.msg
    assert node.stop() == 0
    for _ in range(2):  # keys are never stored: each restart asks again, and says why
        again = start_node(storage)
        client = Client(again)
        try:
            listed = client.backend.ListBackend(backend_pb2.BackendInfo(bid=made.msg))
        finally:
            client.close()
        assert json.loads(listed.status)["state"] == 9
        assert "a64key" in listed.msg
        switch = again.get("/api/v1alpha/switch", params={"bid": made.msg}).json()
        assert switch["status"] == "failed", switch  # REST tells what gRPC tells
        assert switch["error"] == listed.msg and switch["model"] == "sealedcam"
        assert again.stop() == 0
    served = start_node(storage)
    client = Client(served)
    try:  # with its keys it runs on that backend again
        again = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
            bid=made.msg, model=model_info(plain.record), encrypted=1,
            a64key=encryption.seal(device, SECRET), pvtkey=device.pvtkey))
        assert again.code == 0, again.msg
        client.wait_running(made.msg)
    finally:
        client.close()

"""Sealed bundles on a running node: made with `aiserving bundle encrypt` for the
device's key (`aiserving device-key`), loaded over gRPC and REST with no key in the
request, serving the plain bundle's results for every framework with a real test
model, with no plaintext on disk; a damaged or foreign bundle is a clear error and
the node keeps serving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiserving.bundle import sealed
from tests.support import bundles, encryption, mxnet_models, onnx_models, tf_models, \
    tflite_models
from tests.support.grpc_client import Client, backend_pb2, model_info
from tests.support.node import RUN_PY, NodeProcess
from tests.support.served import assert_close

def _aiserving(*args) -> str:
    """A command of the node under test (`run.py <command>`: the release-pack's too)."""
    env = dict(os.environ)
    env.pop("AISRV_SETTINGS", None)
    done = subprocess.run([sys.executable, str(RUN_PY), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=str(RUN_PY.parent))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _seal(plain, storage: Path, public: Path, damage=None) -> Path:
    """What a vendor ships: the plain bundle sealed by the command, put in the store."""
    target = storage / "models" / plain.record.implhash / plain.record.version
    target.parent.mkdir(parents=True, exist_ok=True)
    _aiserving("bundle", "encrypt", str(plain.path), "--device-key", str(public),
               "--out", str(target))
    if damage:
        damage(target)
    return target


def _flip(name: str, offset: int):
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[offset] ^= 0x01
        (folder / name).write_bytes(bytes(data))
    return damage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sealed")
    plain_store, storage = root / "plain", root / "storage"
    key = storage / "keys" / "device-key.pem"
    out = _aiserving("device-key", "--out", str(key))
    assert "fingerprint SHA256:" in out
    other = root / "other.pem"
    _aiserving("device-key", "--out", str(other))
    public = sealed.public_path(key)
    image = bundles.write_image(root / "photo.png", seed=51)
    frozen = tf_models.write_frozen(plain_store, seed=43)
    saved = tf_models.write_unfrozen(plain_store, root / "work", layout="old", seed=44)
    cases = {  # framework -> plain bundle
        "onnx": onnx_models.write_bundle(plain_store, seed=43),
        "tflite": tflite_models.write_bundle(plain_store, seed=43),
        "torchscript": bundles.write_bundle(plain_store, mode="structureEmbed", seed=43),
        "pytorch-split": bundles.write_bundle(plain_store, mode="structureSplit", seed=44,
                                              name="split"),
        "tensorflow-frozen": frozen.bundle,
        "tensorflow-savedmodel": saved.bundle,
        "mxnet": mxnet_models.write_bundle(plain_store, seed=43),
    }
    expected = {
        "onnx": onnx_models.reference(cases["onnx"], image),
        "tflite": tflite_models.reference(cases["tflite"], image),
        "torchscript": bundles.expected_result(cases["torchscript"], image),
        "pytorch-split": bundles.expected_result(cases["pytorch-split"], image),
        "tensorflow-frozen": frozen.reference(image),
        "tensorflow-savedmodel": saved.reference(image),
        "mxnet": mxnet_models.expected_result(cases["mxnet"], image),
    }
    for plain in cases.values():
        _seal(plain, storage, public)
    broken = {  # what is damaged -> bundle
        "model": onnx_models.write_bundle(plain_store, seed=45, name="bad-model"),
        "script": onnx_models.write_bundle(plain_store, seed=46, name="bad-script"),
        "foreign": onnx_models.write_bundle(plain_store, seed=47, name="foreign"),
    }
    _seal(broken["model"], storage, public, damage=_flip("model_core", -5))
    _seal(broken["script"], storage, public, damage=_flip("pre_dataprocess.py", -20))
    _seal(broken["foreign"], storage, sealed.public_path(other))
    node = NodeProcess(storage, env={"AISRV_BACKEND_MAX_COUNT": "10"}).start()
    client = Client(node)
    yield {"node": node, "client": client, "cases": cases, "expected": expected,
           "image": image, "broken": broken, "storage": storage, "key": key}
    client.close()
    node.stop()


def _load(client, bundle):
    return client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=bundle.record.impl), model=model_info(bundle.record)))


def _protected(plain) -> list[Path]:
    """The plain bundle's files that `bundle encrypt` seals."""
    return [plain.path / name for name in sealed.files_to_seal(plain.path)]


@pytest.mark.parametrize("framework", ["onnx", "tflite", "torchscript", "pytorch-split",
                                       "tensorflow-frozen", "tensorflow-savedmodel", "mxnet"])
def test_a_sealed_bundle_serves_the_plain_bundles_results(world, framework):
    node, client = world["node"], world["client"]
    plain = world["cases"][framework]
    made = _load(client, plain)
    assert made.code == 0, made.msg
    try:
        answer = node.detect(world["image"], bid=made.msg)
        assert answer.status_code == 200, answer.text
        assert_close(answer.json()["result"], world["expected"][framework])
        encryption.assert_no_plaintext_on_disk(node, world["storage"], _protected(plain))
    finally:
        client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=made.msg))


def test_rest_switch_loads_a_sealed_bundle(world):
    node = world["node"]
    plain = world["cases"]["onnx"]
    bid = node.switch(btype="onnx", model=plain.fullhash)
    node.wait_switch(bid)
    try:
        assert_close(node.detect(world["image"], bid=bid).json()["result"],
                     world["expected"]["onnx"])
    finally:
        world["client"].backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))


@pytest.mark.parametrize("what, words", [
    ("model", "model_core fails authentication"),
    ("script", "pre_dataprocess.py fails authentication"),
    ("foreign", "is sealed for device key"),
])
def test_a_damaged_or_foreign_bundle_is_a_clear_error(world, what, words):
    node, client = world["node"], world["client"]
    before = {b.info.bid for b in client.backend.ListRunningBackends(Client.ping()).backends}
    refused = _load(client, world["broken"][what])
    assert refused.code == 106 and words in refused.msg, refused.msg
    after = {b.info.bid for b in client.backend.ListRunningBackends(Client.ping()).backends}
    assert after == before
    # The node keeps serving a good sealed bundle.
    made = _load(client, world["cases"]["onnx"])
    assert made.code == 0, made.msg
    try:
        assert node.detect(world["image"], bid=made.msg).status_code == 200
    finally:
        client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=made.msg))

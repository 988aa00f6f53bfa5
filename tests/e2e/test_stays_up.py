"""The node stays up and tells the truth: restarts, SIGTERM, hostile input, leftovers.

Each test reproduces one way the node used to go down or answer wrongly, with
real processes (the node as `python run.py`, its redis, its workers), and
shows that every accepted request is answered and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import textwrap
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support.bundles import reference, write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info
from tests.support.node import NodeProcess


def _wait(predicate, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_backends_and_models_survive_a_restart(storage, tmp_path, start_node):
    alpha = write_bundle(storage, name="alpha", seed=1)
    beta = write_bundle(storage, name="beta", seed=2, labels=["red", "green"])
    gamma = write_bundle(storage, name="gamma", seed=3, labels=["x", "y"])
    image = write_image(tmp_path / "a.png", seed=5)
    node = start_node(storage)
    rest_bid = node.switch(btype="pytorch", model="alpha")
    node.wait_switch(rest_bid)
    client = Client(node)
    made = client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=beta.record.impl, batchsize=3),
        model=model_info(beta.record)))
    assert made.code == 0, made.msg
    doomed = client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=gamma.record.impl), model=model_info(gamma.record)))
    assert doomed.code == 0, doomed.msg
    client.close()
    assert node.stop() == 0
    # The vendor withdrew gamma while the box was off.
    import shutil

    shutil.rmtree(gamma.path)

    again = start_node(storage)  # same storage: a reboot
    again.wait_switch()  # the REST door's backend is back, loaded, with no /switch
    answer = again.detect(image)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["result"]["scores"], reference(alpha, image),
                               rtol=1e-4, atol=1e-5)
    client = Client(again)
    try:
        client.wait_running(made.msg)
        restored = client.backend.ListBackend(backend_pb2.BackendInfo(bid=made.msg))
        assert restored.info.batchsize == 3 and restored.model.name == "beta"
        gone = client.backend.ListBackend(backend_pb2.BackendInfo(bid=doomed.msg))
        assert json.loads(gone.status)["state"] == 9  # error, with the reason
        assert "could not be restored" in gone.msg
        fresh = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl=alpha.record.impl))
        assert int(fresh.msg) > max(int(rest_bid), int(made.msg), int(doomed.msg))
    finally:
        client.close()


def test_sigterm_answers_every_accepted_request(storage, tmp_path, start_node):
    write_bundle(storage, name="slow", delay=0.2)  # 0.2 s per item
    images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(30)]
    node = start_node(storage, env={"AISRV_BATCH_SIZE": "2"})
    node.switch(btype="pytorch", model="slow")
    node.wait_switch()
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(node.detect, p) for p in images]
        time.sleep(1.0)  # about 6 s of work is still queued
        node.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 30
    assert [a.json()["result"]["path"] for a in answers] == [str(p) for p in images]
    assert node.proc.wait(90) == 0


NAN_POST = textwrap.dedent('''\
    import numpy as np


    def post_dataprocess(post_frame):
        return {"nan": float("nan"), "inf": float("inf"), "ninf": -np.inf,
                "array": np.array([np.nan, 1.5]), "ok": 2.0}
''')


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels: a decompression bomb's face."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    storage = root / "storage"
    write_bundle(storage, name="plain", seed=1)
    write_bundle(storage, name="nan", seed=2, post=NAN_POST)
    write_bundle(storage, name="pictures", seed=3, modelext={"input": "image"})
    node = NodeProcess(storage, env={"AISRV_REQUEST_MAX_PIXELS": "4000000"}).start()
    bids = {}
    for name in ("plain", "nan", "pictures"):
        bids[name] = node.switch(btype="pytorch", model=name)
        node.wait_switch(bids[name])
    yield node, root, bids
    node.stop()


def test_non_finite_numbers_in_a_result_are_valid_json(hostile):
    node, root, bids = hostile
    answer = node.detect(write_image(root / "n.png", seed=1), bid=bids["nan"])
    assert answer.status_code == 200

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    body = json.loads(answer.text, parse_constant=refuse)
    assert body["result"] == {"nan": None, "inf": None, "ninf": None, "array": [None, 1.5],
                              "ok": 2.0}


def test_a_deeply_nested_body_is_a_400(hostile):
    node, _, _ = hostile
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/v1alpha/detect", "/api/v1alpha/switch"):
        answer = node.post(path, data=deep, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["message"] == "the request body must be a JSON object"


def test_an_oversized_body_is_a_413(hostile):
    node, _, _ = hostile
    answer = node.post("/api/v1alpha/detect", data=b"x" * (2 * 1024 * 1024),
                       headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["status"] == "failed"


def test_a_decompression_bomb_is_refused_before_decoding(hostile):
    node, root, bids = hostile
    bomb = root / "bomb.png"
    bomb.write_bytes(_png_header_only(30_000, 30_000))  # 900 megapixels, 4 allowed
    # The bundle reads pictures with Pillow: its pre-processing is refused the file.
    answer = node.detect(bomb, bid=bids["plain"])
    assert answer.status_code == 422, answer.text
    assert "DecompressionBomb" in answer.json()["message"]
    # A bundle declaring picture input: refused in the front, before queueing.
    answer = node.detect(bomb, bid=bids["pictures"])
    assert answer.status_code == 400 and "exceeds limit" in answer.json()["message"]
    assert node.detect(write_image(root / "ok.png", seed=2), bid=bids["plain"]).status_code == 200


def test_temp_files_of_a_killed_worker_are_removed(storage, tmp_path, start_node):
    write_bundle(storage, name="slow", delay=0.3)
    image = write_image(tmp_path / "a.png", seed=3)
    tmp = storage / "run" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "left-by-a-crash.png").write_bytes(b"old")  # from a node that did not stop cleanly
    node = start_node(storage, env={"AISRV_BATCH_SIZE": "4"})
    assert not (tmp / "left-by-a-crash.png").exists()  # cleared at start
    node.switch(btype="pytorch", model="slow")
    node.wait_switch()
    client = Client(node)
    encoded = __import__("base64").b64encode(image.read_bytes()).decode()
    uuids = [f"t{n}" for n in range(8)]
    for uuid in uuids:
        assert client.inference.InferenceRemote(inference_pb2.InferRequest(
            bid="0", uuid=uuid, base64=encoded, type="png")).code == 0
    assert _wait(lambda: len(list(tmp.glob("*"))) > 0, every=0.02)
    (victim,) = node.worker_pids()
    os.kill(victim, signal.SIGKILL)
    for uuid in uuids:  # every job is still answered, by the restarted worker
        assert "scores" in client.wait_result(uuid)
    assert _wait(lambda: not list(tmp.glob("*")))
    client.close()

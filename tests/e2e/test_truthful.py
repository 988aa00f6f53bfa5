"""Every answer tells the truth: readiness follows an unload at once, a model a live node
serves is never a 404 (503 with Retry-After while the node publishes it again)."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info


def _grpc_ready(oip, name: str) -> bool:
    try:
        return oip.is_model_ready(name)
    except InferenceServerException as exc:  # NOT_FOUND: served nowhere
        assert "NOT_FOUND" in str(exc) or "UNAVAILABLE" in str(exc), exc
        return False


def test_readiness_flips_with_the_unload(storage, start_node):
    write_bundle(storage, name="tiny", seed=4)
    node = start_node(storage)
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    oip = grpcclient.InferenceServerClient(f"127.0.0.1:{node.oip_grpc_port}")
    client = Client(node)
    try:
        assert node.get("/v2/models/tiny/ready").status_code == 200
        assert _grpc_ready(oip, "tiny")
        assert client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid)).code == 0
        # The very next questions, from both doors, already know.
        assert node.get("/v2/models/tiny/ready").status_code in (404, 503)  # served nowhere
        assert not _grpc_ready(oip, "tiny")
        assert node.get("/v2/health/ready").status_code == 503
    finally:
        client.close()
        oip.close()


def test_a_served_model_is_never_a_404_while_redis_comes_back_empty(storage, tmp_path,
                                                                    start_node):
    write_bundle(storage, name="tiny", seed=5)
    image = write_image(tmp_path / "a.png", seed=5)
    # Memory only: the restarted redis holds nothing until the node publishes again.
    node = start_node(storage, env={"AISRV_REDIS_DURABILITY": "off"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    old = node.redis_pid()
    os.kill(old, signal.SIGKILL)
    seen, retry_after = [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = [node.get("/v2/models/tiny/ready", timeout=10),
                   node.detect(image, bid=bid, timeout=30)]
        seen += [a.status_code for a in answers]
        retry_after += [a.headers.get("Retry-After") for a in answers if a.status_code == 503]
        if all(a.status_code == 200 for a in answers):
            break
        time.sleep(0.02)
    assert seen[-2:] == [200, 200], seen[-10:]
    assert node.redis_pid() != old
    assert set(seen) <= {200, 503}, seen  # never "no such model" for one that is served
    assert all(value == "1" for value in retry_after), retry_after


REFUSING_PRE = textwrap.dedent('''\
    from PIL import Image
    import numpy as np


    def pre_dataprocess(infer_data):
        if infer_data["uuid"] != "preheat":
            raise ValueError("cannot read " + infer_data["path"])
        image = Image.open(infer_data["path"]).convert("RGB").resize((16, 16))
        return {"feed_list": [np.asarray(image, dtype=np.float32).transpose(2, 0, 1)],
                "passby": {"path": infer_data["path"]}}
''')
BROKEN_PRE = "def pre_dataprocess(infer_data:\n    pass\n"


def test_no_answer_names_a_path_of_the_node(storage, tmp_path, start_node):
    import base64

    write_bundle(storage, name="refuses", pre=REFUSING_PRE, seed=6)
    broken = write_bundle(storage, name="broken", pre=BROKEN_PRE, seed=7)
    image = write_image(tmp_path / "a.png", seed=6)
    node = start_node(storage)
    client = Client(node)
    try:
        made = client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
            backend=backend_pb2.BackendInfo(impl="pytorch.structureSplit"),
            model=model_info(broken.record)))
        assert made.code != 0
        failed = node.get("/api/v1alpha/switch", params={"bid": "0"}).json()
        # The node's tries, the errors its doors give and what legacy clients read in db 5.
        bid = node.switch(btype="pytorch", model="refuses")
        node.wait_switch(bid)
        status = node.get("/api/v1alpha/switch", params={"bid": bid}).json()
        remote = client.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid="inline", type="png",
            base64=base64.b64encode(image.read_bytes()).decode()))
        assert remote.code == 0
        stored = client.wait_result("inline")
    finally:
        client.close()
    told = [made.msg, failed.get("error", ""), json.dumps(status), json.dumps(stored)]
    root = str(storage.resolve())
    assert not [t for t in told if root in t], told
    assert stored["status"] == "failed" and "<the inline input>" in stored["message"]
    assert "<the bundle>/pre_dataprocess.py" in made.msg or "pre_dataprocess" in made.msg
    assert root in node.log()  # the log keeps the whole story


def _wait_loaded(node, bid: str, headers: dict) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = node.get("/api/v1alpha/switch", params={"bid": bid}, headers=headers).json()
        if state["status"] == "loaded":
            return
        time.sleep(0.1)
    raise AssertionError(f"backend {bid} did not load: {state}")


def test_logs_are_timestamped_summed_up_and_a_clean_stop_prints_no_traceback(storage, tmp_path,
                                                                              start_node):
    import re

    write_bundle(storage, name="tiny", seed=8)
    image = write_image(tmp_path / "a.png", seed=8)
    node = start_node(storage, env={"AISRV_AUTH_TOKEN": "t0ken", "AISRV_AUTH_MAX_FAILURES": "0"})
    headers = {"Authorization": "Bearer t0ken"}
    answer = node.post("/api/v1alpha/switch", {"btype": "pytorch", "model": "tiny"},
                       headers=headers)
    bid = answer.json()["bid"]
    _wait_loaded(node, bid, headers)
    for _ in range(40):  # one client getting it wrong, again and again
        assert node.get("/readyz").status_code == 401
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "more like it" not in node.log():
        time.sleep(0.5)
    assert node.post("/api/v1alpha/detect", {"path": str(image), "bid": bid},
                     headers=headers).status_code == 200
    node.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert node.proc.wait(60) == 0
    log = node.log()
    assert log.count("authentication failed from 127.0.0.1: GET /readyz") == 2  # once, then
    assert re.search(r"\.\.\. 39 more like it in the last 10 s: authentication failed", log)
    lines = [line for line in log.splitlines() if line.strip()]
    stamped = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \[")
    assert [line for line in lines if not stamped.match(line)] == []
    assert "Traceback" not in log and "Exception ignored" not in log

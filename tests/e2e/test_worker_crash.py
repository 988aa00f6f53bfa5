"""A dead worker loses no accepted request, and comes back."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.bundles import write_bundle, write_image

CRASHING_PRE = '''\
import os
import numpy as np


def pre_dataprocess(infer_data):
    if "crash" in infer_data["path"]:
        os._exit(13)  # vendor code that takes its whole process down
    return {"feed_list": [np.zeros((3, 16, 16), np.float32)], "passby": {"path": infer_data["path"]}}
'''


def _wait(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sigkill_while_requests_are_queued(storage, tmp_path, start_node):
    write_bundle(storage, name="slow", delay=0.25)  # 0.25 s per item in pre-processing
    images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(12)]
    node = start_node(storage, env={"AISRV_BATCH_SIZE": "2", "AISRV_BATCH_MAX_DELAY_MS": "0"})
    node.switch(btype="pytorch", model="slow")
    node.wait_switch()
    (victim,) = node.worker_pids()
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(node.detect, p) for p in images]
        time.sleep(1.0)  # the worker is busy; most requests are still queued
        os.kill(victim, signal.SIGKILL)
        answers = [f.result() for f in futures]
    for path, answer in zip(images, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["path"] == str(path)
    assert _wait(lambda: len(node.worker_pids()) == 1)
    assert node.worker_pids() != [victim]
    assert node.get("/api/v1alpha/switch").json()["status"] == "loaded"
    assert "died during a batch (exit code -9)" in node.log()


def test_a_request_that_keeps_killing_its_worker_is_failed_alone(storage, tmp_path, start_node):
    write_bundle(storage, name="fragile", pre=CRASHING_PRE)
    good = write_image(tmp_path / "good.png", seed=1)
    bad = write_image(tmp_path / "crash.png", seed=2)
    node = start_node(storage, env={"AISRV_WORKER_MAX_DELIVERIES": "2"})
    node.switch(btype="pytorch", model="fragile")
    node.wait_switch()
    with ThreadPoolExecutor(2) as pool:
        bad_answer = pool.submit(node.detect, bad)
        time.sleep(0.2)
        good_answer = pool.submit(node.detect, good)
        bad_answer, good_answer = bad_answer.result(), good_answer.result()
    assert good_answer.status_code == 200, good_answer.text
    assert bad_answer.status_code == 500
    assert "stopped the inference process" in bad_answer.json()["message"]
    assert _wait(lambda: node.get("/api/v1alpha/switch").json()["status"] == "loaded")
    assert node.detect(good).status_code == 200

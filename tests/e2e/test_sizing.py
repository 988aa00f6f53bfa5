"""Workers sized from the box and the model by default, each choice reported and overridable."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

from tests.support.bundles import checked_results, write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info

CORES = os.cpu_count() or 1


def _sizing(node, bid) -> dict:
    return node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]


def test_a_cheap_model_gets_one_process_and_says_why(storage, start_node, tmp_path):
    write_bundle(storage, name="tiny", seed=21)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                    "AISRV_BATCH_AUTOTUNE": None, "AISRV_BATCH_SIZE": "8"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    sizing = _sizing(node, bid)
    most = min(2, CORES)
    # Cheaper per item than the request path around it (~0.8 CPU-ms): a second process
    # would only take a core from the front.
    assert sizing["item_ms"] is not None and sizing["processes"] == 1, sizing
    assert len(node.worker_pids()) == 1
    assert sizing["threads"] == max(1, CORES // most)
    assert 1 <= sizing["batch_cap"] <= 8 and sizing["batchsize"] == 8
    assert sizing["overlap_pre"] is False  # on the CPU: the processes use every core
    # The process measured its batches and logged the table once.
    tables = re.findall(r"cost per item by batch size: 1: [\d.]+ ms.*batches capped at (\d+)",
                        node.log())
    assert [int(cap) for cap in tables] == [sizing["batch_cap"]]
    if most > 1:
        assert re.search(rf"backend {bid}: [\d.]+ ms per item measured; 1 inference "
                         rf"process\(es\) of up to {most}", node.log()), node.log()
    # It serves.
    answer = node.detect(write_image(tmp_path / "one.png", seed=1))
    assert answer.status_code == 200, answer.text


def test_a_dear_model_gets_one_process_per_core(storage, start_node):
    # Pre-processing that waits 20 ms an image (on a camera, a disk): each item costs
    # far more than the request path around it.
    write_bundle(storage, name="slow", seed=25, delay=0.02)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                    "AISRV_BATCH_AUTOTUNE": "false", "AISRV_BATCH_SIZE": "4"})
    bid = node.switch(btype="pytorch", model="slow")
    node.wait_switch(bid)
    sizing = _sizing(node, bid)
    processes = min(2, CORES)
    assert sizing["processes"] == processes and sizing["item_ms"] >= 20, sizing
    assert sizing["batch_cap"] == 4  # measured at batch 1 only: autotune is off
    assert len(node.worker_pids()) == processes
    assert len(re.findall(r"ms per item at batch 1", node.log())) == 1
    # The others took the first one's measurement.
    taken = re.findall(r"batches capped at 4, as measured by this backend's first", node.log())
    assert len(taken) == processes - 1
    # Loaded again (a reload of the same model): all of them at once, nothing re-measured.
    node.switch(bid=bid, model="slow")
    node.wait_switch(bid)
    assert _sizing(node, bid)["processes"] == processes
    assert len(re.findall(r"ms per item at batch 1", node.log())) == 1


def test_a_legacy_client_may_send_once_process_0_says_running(storage, start_node, tmp_path):
    """ListBackend's "0" == 4 is the contract's "ready": while a measured backend starts its
    other processes (it takes no traffic yet), "0" must not say 4."""
    bundle = write_bundle(storage, name="slow", seed=26, delay=0.02)
    image = write_image(tmp_path / "one.png", seed=2)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                    "AISRV_BATCH_AUTOTUNE": "false", "AISRV_BATCH_SIZE": "4"})
    client = Client(node)
    try:
        made = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl=bundle.record.impl))
        assert made.code == 0, made.msg
        reply = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
            bid=made.msg, model=model_info(bundle.record)))
        assert reply.code == 0, reply.msg
        seen = []
        while not seen or seen[-1].get("0") != 4:  # as field clients poll
            seen.append(json.loads(client.backend.ListBackend(
                backend_pb2.BackendInfo(bid=made.msg)).status))
            assert seen[-1].get("0") not in (6, 7), seen[-1]
        sent = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=made.msg, uuid="first-one", path=str(image)))
        assert (sent.code, sent.msg) == (0, "first-one"), (sent, seen[-3:])
        assert "scores" in client.wait_result("first-one")
        if CORES > 1:  # both processes run by then: the generation took traffic
            assert seen[-1].get("1") == 4, seen[-1]
    finally:
        client.close()


def test_a_chosen_process_count_is_kept_whatever_the_model_costs(storage, start_node):
    write_bundle(storage, name="tiny", seed=26)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": "2"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    assert _sizing(node, bid)["processes"] == 2
    assert len(node.worker_pids()) == 2
    assert "inference process(es) of up to" not in node.log()


def test_settings_override_each_choice(storage, start_node):
    write_bundle(storage, name="tiny", seed=22)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": "1",
                                    "AISRV_BE_TRPY_THREADS": "3",
                                    "AISRV_BATCH_AUTOTUNE": "false", "AISRV_BATCH_SIZE": "6"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
    assert sizing == {"processes": 1, "threads": 3, "batchsize": 6, "batch_cap": 6,
                      "overlap_pre": False, "item_ms": None}
    assert "cost per item by batch size" not in node.log()
    assert len(node.worker_pids()) == 1


def test_a_backend_on_a_gpu_gets_one_process(storage, start_node):
    # No GPU here: the backend falls back to the CPU (with a warning), but its sizing
    # is chosen for the device asked for, by the request or by the framework's setting.
    write_bundle(storage, name="tiny", seed=23)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                    "AISRV_BE_TRPY_DEVICE": "cuda"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
    assert sizing["processes"] == 1 and sizing["threads"] == CORES


# Pre-processing that says which thread ran it, slowly enough for requests to queue.
_PRE_SAYS_THREAD = """
import threading
import time

import numpy as np
from PIL import Image


def pre_dataprocess(infer_data):
    time.sleep(0.03)
    image = Image.open(infer_data["path"]).convert("RGB").resize((16, 16))
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return {"feed_list": [array], "passby": {"path": infer_data["path"],
                                             "thread": threading.current_thread().name}}
"""

_POST_SAYS_THREAD = """
import numpy as np


def post_dataprocess(post_frame):
    scores = np.asarray(post_frame["infers"][0])
    return {"path": post_frame["passby"]["path"], "scores": scores.tolist(),
            "thread": post_frame["passby"]["thread"]}
"""


def test_overlap_pre_processes_the_next_batch_during_inference(storage, start_node, tmp_path):
    bundle = write_bundle(storage, name="tiny", seed=24, pre=_PRE_SAYS_THREAD,
                          post=_POST_SAYS_THREAD)
    node = start_node(storage, env={"AISRV_WORKER_OVERLAP_PRE": "on", "AISRV_BATCH_SIZE": "2",
                                    "AISRV_BATCH_AUTOTUNE": "false"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    assert node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"][
        "overlap_pre"] is True
    assert "next batch pre-processed during inference" in node.log()
    images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(node.detect, images))
    threads = {body["result"]["thread"] for body in checked_results(bundle, images, answers)}
    # Batches queued behind a running one were pre-processed beside its inference.
    assert "pre-ahead" in threads, threads
    # Nothing left behind in the queue.
    metrics = node.get("/metrics").text
    assert re.search(r'aisrv_queue_depth\{model="[^"]+"\} 0\.0', metrics), metrics

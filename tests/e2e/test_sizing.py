"""Workers sized from the box by default, each choice reported and overridable."""

from __future__ import annotations

import os
import re

from tests.support.bundles import write_bundle

CORES = os.cpu_count() or 1


def test_defaults_use_the_whole_box_and_say_so(storage, start_node):
    write_bundle(storage, name="tiny", seed=21)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                    "AISRV_BATCH_AUTOTUNE": None, "AISRV_BATCH_SIZE": "8"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
    processes = min(2, CORES)
    assert sizing["processes"] == processes
    assert sizing["threads"] == max(1, CORES // processes)
    assert 1 <= sizing["batch_cap"] <= 8 and sizing["batchsize"] == 8
    assert sizing["overlap_pre"] is False  # on the CPU: the processes use every core
    assert len(node.worker_pids()) == processes
    # The first process measured its batches and logged the table once; the others
    # took its answer.
    tables = re.findall(r"cost per item by batch size: 1: [\d.]+ ms.*batches capped at (\d+)",
                        node.log())
    assert [int(cap) for cap in tables] == [sizing["batch_cap"]]
    taken = re.findall(r"batches capped at (\d+), as measured by this backend's first", node.log())
    assert taken == [str(sizing["batch_cap"])] * (processes - 1)


def test_settings_override_each_choice(storage, start_node):
    write_bundle(storage, name="tiny", seed=22)
    node = start_node(storage, env={"AISRV_BACKEND_INFERPROCNUM": "1",
                                    "AISRV_BE_TRPY_THREADS": "3",
                                    "AISRV_BATCH_AUTOTUNE": "false", "AISRV_BATCH_SIZE": "6"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
    assert sizing == {"processes": 1, "threads": 3, "batchsize": 6, "batch_cap": 6,
                      "overlap_pre": False}
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
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from tests.support.bundles import reference, write_image

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
    threads = set()
    for path, answer in zip(images, answers):
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        assert result["path"] == str(path)
        np.testing.assert_allclose(result["scores"], reference(bundle, path), rtol=1e-4,
                                   atol=1e-5)
        threads.add(result["thread"])
    # Batches queued behind a running one were pre-processed beside its inference.
    assert "pre-ahead" in threads, threads
    # Nothing left behind in the queue.
    metrics = node.get("/metrics").text
    assert re.search(r'aisrv_queue_depth\{model="[^"]+"\} 0\.0', metrics), metrics

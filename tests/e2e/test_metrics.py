"""`GET /metrics`: Prometheus text summed over the front, daemon and inference
processes, moving as requests are served."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import Client, inference_pb2


def _scrape(node) -> dict:
    """{(sample name, frozenset of label pairs): value}"""
    answer = node.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _wait_for(node, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(node)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_metrics_move_as_requests_are_served(storage, tmp_path, start_node):
    bundle = write_bundle(storage, name="tiny", seed=4)
    model = bundle.fullhash
    images = [write_image(tmp_path / f"img{n}.png", seed=200 + n) for n in range(16)]
    node = start_node(storage, env={"AISRV_BATCH_SIZE": "8"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    start = _scrape(node)
    assert _value(start, "aisrv_model_load_seconds_count", model=model) >= 1
    assert _value(start, "aisrv_queue_depth", model=model) == 0

    # Requests queued while the worker is paused: the queue depth shows them, and when
    # it goes on it takes them in batches.
    pids = node.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(images)) as pool:
            futures = [pool.submit(node.detect, path) for path in images]
            queued = _wait_for(node, lambda s: _value(s, "aisrv_queue_depth", model=model) == 16
                               and _value(s, "aisrv_front_in_flight") == 16)
            assert _value(queued, "aisrv_queue_depth", model=model) == 16
            assert _value(queued, "aisrv_front_in_flight") == 16
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            answers = [f.result() for f in futures]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

    after = _wait_for(node, lambda s: _value(s, "aisrv_batch_size_sum", model=model) >= 16 + 1)
    served = _value(after, "aisrv_requests_total", door="rest", model=model, outcome="ok")
    assert served - _value(start, "aisrv_requests_total", door="rest", model=model,
                           outcome="ok") == 16
    assert _value(after, "aisrv_request_seconds_count", door="rest", model=model) >= 16
    # Every request went through exactly one batch, and some batches held several.
    jobs = _value(after, "aisrv_batch_size_sum", model=model) - \
        _value(start, "aisrv_batch_size_sum", model=model)
    batches = _value(after, "aisrv_batch_size_count", model=model) - \
        _value(start, "aisrv_batch_size_count", model=model)
    assert jobs == 16 and batches < 16
    for stage in ("queue", "pre", "infer", "post"):
        assert _value(after, "aisrv_stage_seconds_count", model=model, stage=stage) > 0, stage
    assert _value(after, "aisrv_stage_seconds_count", model=model, stage="queue") >= 16
    assert _value(after, "aisrv_queue_depth", model=model) == 0
    assert _value(after, "aisrv_front_in_flight") == 0

    # Refusals are counted by their legacy code, gRPC jobs as queued.
    refused = node.detect(tmp_path / "missing.png")
    assert refused.status_code >= 400
    client = Client(node)
    try:
        queued = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=bid, uuid="metrics-grpc", path=str(images[0])))
        assert queued.code == 0, queued.msg
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG not really")
        queued = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=bid, uuid="metrics-broken", path=str(broken)))
        assert queued.code == 0, queued.msg
        assert client.wait_result("metrics-broken")["status"] == "failed"
    finally:
        client.close()
    # The log names the request that failed by its uuid.
    assert "request metrics-broken: " in node.log()
    counted = _scrape(node)
    outcomes = {dict(labels)["outcome"]: value for (name, labels), value in counted.items()
                if name == "aisrv_requests_total" and dict(labels)["door"] == "rest"}
    assert sum(v for k, v in outcomes.items() if k != "ok") == 1, outcomes
    assert _value(counted, "aisrv_requests_total", door="grpc", model=model,
                  outcome="queued") == 2

    # A worker that dies is restarted, and counted.
    os.kill(node.worker_pids()[0], signal.SIGKILL)
    restarted = _wait_for(node, lambda s: _value(s, "aisrv_worker_restarts_total",
                                                 model=model) >= 1)
    assert _value(restarted, "aisrv_worker_restarts_total", model=model) == 1

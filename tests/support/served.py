"""One check every framework backend passes: served results equal the framework's own.

A test builds a small real model with its framework, packs it as a JSM bundle
the way a vendor would, and hands it here with a function that computes the
expected post-processing result for an input with the raw framework. This
module then, on one running node, for each batch size:

- creates a backend with that batch size over gRPC (InitializeBackend +
  ReloadModelOnBackend, as the fleet controller does) and waits for it to run;
- sends every input through REST `/detect` from several threads at once;
- sends every input through gRPC InferenceLocal and InferenceRemote (inline
  bytes) and reads the results from redis db 5, as legacy clients do;
- compares each result with the expected one, numerically;
- at batch sizes above 1, checks from the node's `--profile` log that batches
  of more than one item really formed (so the batched framework call was
  exercised, not only the single-item one). Timing cannot promise that with a
  fast model, so the gRPC jobs are queued while the inference processes are
  stopped (SIGSTOP) and let go together (SIGCONT): the worker then finds a full
  queue and takes whole batches;
- terminates the backend.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info

_BATCH_LINE = re.compile(r"batch of (\d+) \((\d+) failed\)")


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-4, atol: float = 1e-5,
                 where: str = "result") -> None:
    """Equal structure; numbers within tolerance, everything else exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], rtol=rtol, atol=atol, where=f"{where}.{key}")
    elif isinstance(expected, (list, tuple, np.ndarray)) and not _numeric(expected):
        assert isinstance(actual, list) and len(actual) == len(expected), \
            f"{where}: {actual!r} does not match {expected!r}"
        for n, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol=rtol, atol=atol, where=f"{where}[{n}]")
    elif _numeric(expected):
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                                   np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol,
                                   err_msg=where)
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.number)):
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            array = np.asarray(value)
        except ValueError:
            return False
        return array.dtype.kind in "iuf" and array.size > 0
    return False


def check_served(node, bundle, inputs: Sequence[Path], expected: Callable[[Path], Any], *,
                 batch_sizes: Sequence[int] = (1, 8), clients: int = 8, rounds: int = 3,
                 inline_type: str = "png", path_keys: Sequence[str] = (), rtol: float = 1e-4,
                 atol: float = 1e-5) -> None:
    """Serve `bundle` on `node` (started with `--profile`) and compare every result.

    `expected(path)` is the post-processing result the raw framework gives for the
    input at `path`. Each input is sent `rounds` times through REST and once through
    each gRPC inference rpc, at every batch size. `path_keys` name top-level result
    keys that echo the input path: InferenceRemote hands the bundle a private temp
    file instead, so there they are not compared.
    """
    want = {Path(p): expected(Path(p)) for p in inputs}
    client = Client(node)
    try:
        for batchsize in batch_sizes:
            log_from = len(node.log())
            bid = _start_backend(client, bundle, batchsize)
            try:
                _via_rest(node, bid, want, clients, rounds, rtol, atol)
                _via_grpc(node, client, bid, want, inline_type, path_keys, rtol, atol)
            finally:
                assert client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid)).code == 0
            sizes = [int(m.group(1)) for m in _BATCH_LINE.finditer(node.log()[log_from:])]
            assert sizes, "the node was not started with --profile: no batch lines in its log"
            assert max(sizes) <= batchsize, f"batch larger than {batchsize}: {max(sizes)}"
            if batchsize > 1:
                assert max(sizes) > 1, (f"no batch of more than one item formed at batch size "
                                        f"{batchsize} under {clients} concurrent clients: {sizes}")
    finally:
        client.close()


def _start_backend(client: Client, bundle, batchsize: int) -> str:
    made = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl=bundle.record.impl,
                                                                    batchsize=batchsize))
    assert made.code == 0, made.msg
    bid = made.msg
    reply = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
        bid=bid, model=model_info(bundle.record)))
    assert reply.code == 0, reply.msg
    client.wait_running(bid, timeout=180)
    return bid


def _via_rest(node, bid: str, want: dict, clients: int, rounds: int, rtol, atol) -> None:
    paths = [p for _ in range(rounds) for p in want]

    def one(path: Path):
        response = node.detect(path, bid=bid)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        body = response.json()
        assert body["status"] == "success", body
        return path, body["result"]

    with ThreadPoolExecutor(clients) as pool:
        for path, result in pool.map(one, paths):
            assert_close(result, want[path], rtol=rtol, atol=atol, where=f"REST {path.name}")


@contextlib.contextmanager
def _workers_paused(node):
    pids = node.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _via_grpc(node, client: Client, bid: str, want: dict, inline_type: str, path_keys, rtol,
              atol) -> None:
    with _workers_paused(node):  # both rpcs return at once: the jobs pile up, then batch
        sent = _send_grpc(client, bid, want, inline_type)
    for uuid, path, rpc in sent:
        result = client.wait_result(uuid)
        assert "code" not in result or "status" not in result, f"{rpc} {path.name}: {result}"
        expected = want[path]
        if rpc == "InferenceRemote" and path_keys:
            for key in path_keys:
                assert isinstance(result.pop(key, None), str), f"{rpc} {path.name}: no {key}"
            expected = {k: v for k, v in expected.items() if k not in path_keys}
        assert_close(result, expected, rtol=rtol, atol=atol, where=f"{rpc} {path.name}")


def _send_grpc(client: Client, bid: str, want: dict, inline_type: str) -> list:
    sent = []
    for path in want:
        uuid = uuidlib.uuid4().hex
        reply = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid=bid, uuid=uuid, path=str(path)))
        assert (reply.code, reply.msg) == (0, uuid), reply
        sent.append((uuid, path, "InferenceLocal"))
    for path in want:
        uuid = uuidlib.uuid4().hex
        reply = client.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid=uuid, type=inline_type,
            base64=base64.b64encode(path.read_bytes()).decode()))
        assert (reply.code, reply.msg) == (0, uuid), reply
        sent.append((uuid, path, "InferenceRemote"))
    return sent

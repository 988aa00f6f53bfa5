"""Throughput and latency of /detect against plain torch, measured in the same run.

    .venv/bin/python bench/bench_rest.py [--requests 400] [--clients 16] [--batch 8]

Plain torch: one process running the demo bundle's own pre-processing, forward
pass and post-processing per image, in a loop (what a script without a server
does). Node: a real node (`run.py`) with the demo bundle, `--clients` concurrent
HTTP clients on the same machine. Prints images/s of both and their ratio, the CPU
time all node processes spent per request against plain torch's per image (the
clients' CPU is not counted there), and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# Extra environment for the node, e.g. BENCH_NODE_ENV='{"AISRV_BE_TRPY_THREADS": "2"}'.
EXTRA_ENV = json.loads(os.environ.get("BENCH_NODE_ENV", "{}"))
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from aiserving.bundle.vendor import VendorCode  # noqa: E402
from aiserving.demo import LABELS, draw_shape, ensure_demo  # noqa: E402
from tests.support.node import NodeProcess  # noqa: E402


def plain_torch(bundle, images: list[Path]) -> float:
    """The bundle run by hand with torch's own defaults, as a script without a server would."""
    import torch

    vendor = VendorCode.load(bundle)
    namespace: dict = {}
    exec((bundle.path / "model.py").read_text(), namespace)
    model = namespace["build_structure"]()
    model.load_state_dict(torch.load(bundle.path / "param.pth", weights_only=True)["state_dict"])
    model.eval()
    rec = bundle.record
    frame = {"labels": rec.labels, "threshold": rec.threshold_values, "mapping": rec.mapping}
    start, cpu = time.perf_counter(), time.process_time()
    for n, path in enumerate(images):
        pre = vendor.pre({"uuid": str(n), "path": str(path)})
        with torch.inference_mode():
            out = model(torch.from_numpy(pre["feed_list"][0][None])).numpy()
        vendor.post({**frame, "infers": [out[0]], "passby": pre["passby"]})
    return (len(images) / (time.perf_counter() - start),
            1000 * (time.process_time() - cpu) / len(images))


def node_rate(storage: Path, images: list[Path], clients: int, batch: int):
    node = NodeProcess(storage, env={"AISRV_BATCH_SIZE": str(batch), **EXTRA_ENV,
                                     "AISRV_AUTOLOAD": "demo-shapes"}).start()
    try:
        node.wait_switch()
        for path in images[:20]:
            node.detect(path)  # warm the connection pools
        latencies = []

        def one(path):
            t = time.perf_counter()
            answer = node.detect(path)
            ok = answer.status_code == 200
            if not ok:
                print("failed:", answer.status_code, answer.text[:300], flush=True)
            latencies.append(time.perf_counter() - t)
            return ok

        tree = [psutil.Process(node.proc.pid)] + psutil.Process(node.proc.pid).children(recursive=True)
        cpu_before = sum(_cpu(p) for p in tree)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, images))
        rate = len(images) / (time.perf_counter() - start)
        cpu_ms = 1000 * (sum(_cpu(p) for p in tree) - cpu_before) / len(images)
        assert all(results), "some requests failed"
        return rate, latencies, cpu_ms
    finally:
        node.stop()


def _cpu(process) -> float:
    """CPU seconds a process of the node used (redis, fronts, workers, the daemon)."""
    try:
        t = process.cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        bundle, _ = ensure_demo(storage)
        import random

        rng = random.Random(0)
        images = []
        for n in range(args.requests):
            path = Path(tmp) / f"img{n}.jpg"
            draw_shape(LABELS[n % 3], rng, 128).save(path, "JPEG")
            images.append(path)
        raw, raw_cpu = plain_torch(bundle, images)
        rate, latencies, cpu_ms = node_rate(storage, images, args.clients, args.batch)
    q = statistics.quantiles(latencies, n=100)
    print(f"plain torch, one process : {raw:8.1f} images/s, {raw_cpu:.2f} CPU-ms per image")
    print(f"node, {args.clients} clients, batch {args.batch:<3}: {rate:8.1f} images/s "
          f"(ratio {rate / raw:.2f}x of plain torch; the clients share these cores)")
    print(f"node CPU per request     : {cpu_ms:.2f} ms (ratio {cpu_ms / raw_cpu:.2f}x of plain "
          f"torch), all node processes")
    print(f"node latency             : p50 {1000 * q[49]:.1f} ms, p99 {1000 * q[98]:.1f} ms")


if __name__ == "__main__":
    main()

"""Throughput and latency of /detect against plain torch, measured in the same run.

    .venv/bin/python bench/bench_rest.py [--requests 400] [--clients 16] [--batch 8]

Plain torch: one process running the demo bundle's own pre-processing, forward
pass and post-processing per image, in a loop (what a script without a server
does). Node: a real node (`run.py`) with the demo bundle, `--clients` concurrent
HTTP clients. Prints images/s of both and their ratio, plus latency percentiles.
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
    start = time.perf_counter()
    for n, path in enumerate(images):
        pre = vendor.pre({"uuid": str(n), "path": str(path)})
        with torch.inference_mode():
            out = model(torch.from_numpy(pre["feed_list"][0][None])).numpy()
        vendor.post({**frame, "infers": [out[0]], "passby": pre["passby"]})
    return len(images) / (time.perf_counter() - start)


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

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, images))
        rate = len(images) / (time.perf_counter() - start)
        assert all(results), "some requests failed"
        return rate, latencies
    finally:
        node.stop()


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
        raw = plain_torch(bundle, images)
        rate, latencies = node_rate(storage, images, args.clients, args.batch)
    q = statistics.quantiles(latencies, n=100)
    print(f"plain torch, one process : {raw:8.1f} images/s")
    print(f"node, {args.clients} clients, batch {args.batch:<3}: {rate:8.1f} images/s "
          f"(ratio {rate / raw:.2f}x of plain torch)")
    print(f"node latency             : p50 {1000 * q[49]:.1f} ms, p99 {1000 * q[98]:.1f} ms")


if __name__ == "__main__":
    main()

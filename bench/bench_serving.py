"""The node against the raw framework, measured in one run on the same cores.

    .venv/bin/python bench/bench_serving.py [--seconds 8] [--out bench/RESULTS.md]

Two models: the demo bundle (a tiny CNN, overhead-bound) and a MobileNetV2-shaped
CNN (10-30 ms per image on one core, compute-bound), both as vendors ship them.

Raw: the bundle's own pre-processing, forward pass and post-processing in a loop,
in-process, at batch 1 and at the backend's batch size, in one process using all
cores and in one single-threaded process per core. Node: a real node (`run.py`)
with its **default settings**, closed-loop HTTP clients (keep-alive, one
connection each) at concurrency 1, 8 and 16 on the same machine. Printed and
written to `--out`: req/s, p50/p99, served/raw ratios, CPU-ms per request of each
kind of node process (REST front, daemon, redis, inference workers) and the idle
node's memory (front + daemon + redis, no model loaded).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from aiserving.bundle.record import DistroRecord  # noqa: E402
from aiserving.bundle.store import BundleStore  # noqa: E402
from aiserving.bundle.vendor import VendorCode  # noqa: E402
from aiserving.cli.demo import LABELS, draw_shape, ensure_demo  # noqa: E402
from tests.support.node import NodeProcess  # noqa: E402

BATCH = 8
CNN_PRE = '''\
import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def pre_dataprocess(infer_data):
    image = Image.open(infer_data["path"]).convert("RGB").resize((224, 224))
    x = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return {"feed_list": [x.transpose(2, 0, 1).copy()], "passby": {"path": infer_data["path"]}}
'''
CNN_POST = '''\
import numpy as np


def post_dataprocess(post_frame):
    scores = np.asarray(post_frame["infers"][0])
    best = int(scores.argmax())
    return {"label": post_frame["labels"][best], "score": float(scores[best])}
'''


def mobilenet_v2(classes: int = 10):
    """MobileNetV2's layer shapes (width 1.0, 224x224), random weights."""
    import torch
    from torch import nn

    def conv(i, o, k=3, s=1, g=1, act=True):
        layers = [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class Inverted(nn.Module):
        def __init__(self, i, o, s, t):
            super().__init__()
            h = i * t
            layers = (conv(i, h, 1) if t != 1 else []) + conv(h, h, 3, s, h) + \
                conv(h, o, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.skip = s == 1 and i == o

        def forward(self, x):
            return x + self.body(x) if self.skip else self.body(x)

    torch.manual_seed(0)
    layers, c = conv(3, 32, 3, 2), 32
    for t, o, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for k in range(n):
            layers.append(Inverted(c, o, s if k == 0 else 1, t))
            c = o
    layers += conv(c, 1280, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers).eval()


def write_cnn_bundle(storage: Path):
    import torch

    model = mobilenet_v2()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), buffer)
    record = DistroRecord.create(name="mobilenet", labels=[f"class{n}" for n in range(10)],
                                 head="MobileNetV2", bone="bench", impl="pytorch.structureEmbed",
                                 version="1", modelext="")
    return BundleStore(storage).write(record, {"model_core": buffer.getvalue(),
                                               "pre_dataprocess.py": CNN_PRE,
                                               "post_dataprocess.py": CNN_POST})


# --- raw framework ----------------------------------------------------------------------

def _raw_loop(bundle_path: str, images: list[str], batch: int, threads: int, seconds: float,
              start, out) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    store_root = Path(bundle_path).parents[2]
    implhash, version = Path(bundle_path).parent.name, Path(bundle_path).name
    bundle = BundleStore(store_root).load(implhash, version)
    vendor = VendorCode.load(bundle)
    if bundle.record.impl.endswith("structureEmbed"):
        model = torch.jit.load(str(bundle.path / "model_core"))
    else:
        namespace: dict = {}
        exec((bundle.path / "model.py").read_text(), namespace)
        model = namespace["build_structure"]()
        model.load_state_dict(torch.load(bundle.path / "param.pth",
                                         weights_only=True)["state_dict"])
    model.eval()
    rec = bundle.record
    frame = {"labels": rec.labels, "threshold": rec.threshold_values, "mapping": rec.mapping}

    def step(paths):
        pres = [vendor.pre({"uuid": "x", "path": p}) for p in paths]
        feed = torch.from_numpy(np.stack([p["feed_list"][0] for p in pres]))
        with torch.inference_mode():
            outs = model(feed).numpy()
        for pre, out in zip(pres, outs):
            vendor.post({**frame, "infers": [out], "passby": pre["passby"]})

    for _ in range(3):
        step(images[:batch])
    start.wait()
    n, t0, lat = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        step([images[(n + k) % len(images)] for k in range(batch)])
        lat.append((time.perf_counter() - t) / batch)
        n += batch
    out.put((n, time.perf_counter() - t0, statistics.median(lat)))


def raw(bundle, images, batch: int, processes: int, threads: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_raw_loop, args=(str(bundle.path), [str(p) for p in images],
                                                  batch, threads, seconds, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    got = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    rate = sum(n / took for n, took, _ in got)
    return {"rate": rate, "p50_ms": 1000 * statistics.median(m for _, _, m in got)}


# --- the node ---------------------------------------------------------------------------

def _kind(process: psutil.Process, root: int) -> str:
    if process.pid == root:
        return "daemon"
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "redis-server" in cmd or "redis" in process.name():
        return "redis"
    if "gunicorn" in cmd:
        return "front"
    if "spawn_main" in cmd:
        return "workers"
    return "other"


def _cpu_by_kind(node) -> dict[str, float]:
    root = psutil.Process(node.proc.pid)
    totals: dict[str, float] = {}
    for p in [root] + root.children(recursive=True):
        try:
            t = p.cpu_times()
            totals[_kind(p, root.pid)] = totals.get(_kind(p, root.pid), 0.0) + t.user + t.system
        except psutil.Error:
            pass
    return totals


def _idle_memory_mb(node) -> tuple[float, float]:
    """(RSS, PSS) of the front, daemon and redis processes, once the start-up probes of
    the frameworks (child processes that import each one) have exited."""
    root = psutil.Process(node.proc.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
            _kind(p, root.pid) in ("workers", "other") for p in root.children(recursive=True)):
        time.sleep(0.5)
    rss = pss = 0
    for p in [root] + root.children(recursive=True):
        if _kind(p, root.pid) not in ("front", "daemon", "redis"):
            continue
        try:
            full = p.memory_full_info()
            rss, pss = rss + full.rss, pss + full.pss
        except psutil.Error:
            pass
    return rss / 2 ** 20, pss / 2 ** 20


def load(port: int, images: list[Path], clients: int, seconds: float, bid: str) -> dict:
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, k = [], n
        while time.perf_counter() < stop_at:
            body = json.dumps({"path": str(images[k % len(images)]), "bid": bid})
            t = time.perf_counter()
            conn.request("POST", "/api/v1alpha/detect", body,
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            mine.append(time.perf_counter() - t)
            if answer.status != 200:
                failures.append(data[:200].decode(errors="replace"))
            k += clients
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"rate": len(latencies) / took, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
            # what the load generator itself took from the same cores
            "client_cpu_ms": 1000 * (time.process_time() - cpu0) / max(1, len(latencies)),
            "requests": len(latencies), "failures": len(failures),
            "first_failure": failures[0] if failures else ""}


def _stage_totals(node) -> tuple[float, float]:
    """CPU seconds the workers spent outside pre/infer/post, and items run, from /metrics."""
    staged = items = 0.0
    for line in node.get("/metrics").text.splitlines():
        if line.startswith("aisrv_worker_cpu_seconds_total") and 'part="serving"' in line:
            staged += float(line.rsplit(" ", 1)[1])
        elif line.startswith("aisrv_batch_size_sum"):
            items += float(line.rsplit(" ", 1)[1])
    return staged, items


def _measured_load(node, stats, images, clients: int, seconds: float, bid: str) -> dict:
    """One closed-loop run against the node, with the CPU each part of it took."""
    staged0, items0 = _stage_totals(node)
    before = _cpu_by_kind(node)
    commands = stats.info("stats")["total_commands_processed"]
    row = load(node.port, images, clients, seconds, bid)
    after = _cpu_by_kind(node)
    staged1, items1 = _stage_totals(node)
    # The workers' CPU outside pre/infer/post, per item (as they measure it).
    row["worker_overhead_ms"] = 1000 * (staged1 - staged0) / max(1.0, items1 - items0)
    # (the INFO call itself and the node's heartbeat are in it too: a few per second)
    row["commands"] = (stats.info("stats")["total_commands_processed"] - commands) / \
        row["requests"]
    row["clients"] = clients
    row["cpu_ms"] = {k: 1000 * (after.get(k, 0) - before.get(k, 0)) / row["requests"]
                     for k in ("front", "daemon", "redis", "workers")}
    return row


def node_runs(storage: Path, bundle, images, seconds: float,
              env: dict | None = None, repeat: int = 3) -> tuple[list[dict], dict, tuple]:
    # The product's defaults (none of the fixed sizes the test suite pins), but what
    # `--set` changes.
    node = NodeProcess(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                     "AISRV_BATCH_AUTOTUNE": None,
                                     "AISRV_REQUEST_TIMEOUT_S": None, **(env or {})}).start()
    try:
        idle = _idle_memory_mb(node)
        bid = node.switch(btype="pytorch", model=bundle.fullhash)
        node.wait_switch(bid, timeout=300)
        sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
        load(node.port, images, 4, 2.0, bid)  # warm up
        rows = []
        import redis

        stats = redis.Redis(port=node.redis_port)
        for clients in (1, 8, 16):
            runs = [_measured_load(node, stats, images, clients, seconds, bid)
                    for _ in range(repeat)]
            # The run of median throughput, whole: this VM's speed drifts between runs.
            rows.append(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2])
        return rows, sizing, idle
    finally:
        node.stop()


def floor(images: list[Path], seconds: float) -> list[dict]:
    """req/s and CPU of a minimal Flask app under the node's gunicorn settings."""
    from tests.support.node import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]))
    front = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--worker-class", "aiserving.api.rest.gunicorn.GuardedGeventWorker",
         "--worker-connections", "1000", "--keep-alive", "2", "--log-level", "warning",
         "floor_app:app"], env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("POST", "/api/v1alpha/detect", "{}")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        tree = [psutil.Process(front.pid)] + psutil.Process(front.pid).children(recursive=True)
        rows = []
        for clients in (1, 16):
            cpu0 = sum(sum(p.cpu_times()[:2]) for p in tree)
            row = load(port, images, clients, seconds, "")
            row["clients"] = clients
            row["cpu_ms"] = 1000 * (sum(sum(p.cpu_times()[:2]) for p in tree) - cpu0) / \
                row["requests"]
            rows.append(row)
        return rows
    finally:
        front.terminate()
        front.wait(30)


def demo_images(storage: Path, count: int = 64) -> list[Path]:
    """The demo's shapes as JPEG inputs under `<storage>/input/`, the same every run."""
    import random

    rng = random.Random(0)
    images = []
    for n in range(count):
        path = storage / "input" / f"img{n}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_shape(LABELS[n % 3], rng, 128).save(path, "JPEG")
        images.append(path)
    return images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--models", default="demo,cnn")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per concurrency; the run of median req/s is reported")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the minimal Flask app under the same gunicorn settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a node setting other than its default, e.g. "
                             "result.store_answered=false (repeatable)")
    args = parser.parse_args()
    env = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        env["AISRV_" + key.upper().replace(".", "_")] = value
    cores = os.cpu_count() or 1
    lines = ["# Benchmark results\n",
             f"Machine: {platform.processor() or platform.machine()}, {cores} cores, "
             f"{psutil.virtual_memory().total / 2 ** 30:.1f} GiB, Python "
             f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}. Command: "
             f"`.venv/bin/python bench/bench_serving.py --seconds {args.seconds:g} "
             f"--repeat {args.repeat}{''.join(' --set ' + p for p in args.set)}`. The load "
             f"generator runs on the same cores as the node; each node row is the run of "
             f"median req/s out of {args.repeat}.\n"]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        demo, _ = ensure_demo(storage)
        cnn = write_cnn_bundle(storage)
        images = demo_images(storage)
        for name in filter(None, args.models.split(",")):
            bundle = {"demo": demo, "cnn": cnn}[name]
            raws = {}
            for batch in (1, BATCH):
                raws[f"1 process x {cores} threads, batch {batch}"] = raw(
                    bundle, images, batch, 1, cores, args.seconds)
                raws[f"{cores} processes x 1 thread, batch {batch}"] = raw(
                    bundle, images, batch, cores, 1, args.seconds)
            best = max(r["rate"] for r in raws.values())
            rows, sizing, idle = node_runs(storage, bundle, images, args.seconds, env,
                                           args.repeat)
            # The forward the node's processes run: with as many threads as each of them.
            single = raws[f"1 process x {cores} threads, batch 1"] \
                if sizing["threads"] >= cores else raws[f"{cores} processes x 1 thread, batch 1"]
            lines.append(f"\n## {name} ({bundle.record.impl})\n")
            lines.append("| raw framework, in-process | images/s | p50 ms per image |")
            lines.append("|---|---:|---:|")
            for label, r in raws.items():
                lines.append(f"| {label} | {r['rate']:.1f} | {r['p50_ms']:.2f} |")
            lines.append(f"\nNode defaults chose: {sizing}. Idle node (front + daemon + "
                         f"redis, no model): {idle[0]:.0f} MB RSS, {idle[1]:.0f} MB PSS "
                         f"(pages the forked front workers share counted once).\n")
            lines.append("| node, REST | req/s | served/raw best | p50 ms | p99 ms | "
                         "p50 added to raw batch-1 (same threads per process) | "
                         "CPU-ms/req front | daemon | redis | workers | load generator | "
                         "worker CPU-ms/item outside pre/infer/post | redis commands/req | "
                         "failures |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                c = r["cpu_ms"]
                lines.append(f"| concurrency {r['clients']} | {r['rate']:.1f} | "
                             f"{r['rate'] / best:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                             f"{r['p50_ms'] - single['p50_ms']:+.2f} | {c['front']:.3f} | "
                             f"{c['daemon']:.3f} | {c['redis']:.3f} | {c['workers']:.3f} | "
                             f"{r['client_cpu_ms']:.3f} | {r['worker_overhead_ms']:.3f} | "
                             f"{r['commands']:.1f} | {r['failures']} |")
            print("\n".join(lines[-(len(rows) + len(raws) + 6):]), flush=True)
        if not args.no_floor:
            lines.append("\n## The front's floor: a minimal Flask app, same gunicorn settings\n")
            lines.append("It answers a fixed JSON body: no redis, no model. What the node's "
                         "front can reach with Flask under gunicorn + gevent on this box.\n")
            lines.append("| minimal app | req/s | p50 ms | p99 ms | CPU-ms/req (gunicorn) | "
                         "load generator |")
            lines.append("|---|---:|---:|---:|---:|---:|")
            for r in floor(images, args.seconds):
                lines.append(f"| concurrency {r['clients']} | {r['rate']:.1f} | "
                             f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms']:.3f} | "
                             f"{r['client_cpu_ms']:.3f} |")
            print("\n".join(lines[-6:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()

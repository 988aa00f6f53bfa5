"""What the embedded redis's append-only file costs: req/s and disk bytes per request for
each `redis.durability`, in one run on the same cores.

    .venv/bin/python bench/bench_durability.py [--seconds 8] [--clients 8] [--repeat 3]

For each mode (`off`, the memory-only baseline; `everysec`; `always`) a real node
(`run.py`, default settings but that one) serves the demo bundle to closed-loop HTTP
clients (`/detect`); the bytes the redis process wrote to the block layer
(`write_bytes` of `/proc/<pid>/io`) and the bytes it handed the kernel (`wchar`) are
read before and after. Printed: req/s and its ratio to `off`, p50, bytes per request
and what that is in flash writes per day at a steady 1 and 10 requests per second.
The storage lives on the disk this script runs from (not a tmpfs), or `--dir`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from bench_serving import demo_images, load  # noqa: E402

from aiserving.cli.demo import ensure_demo  # noqa: E402
from tests.support.node import NodeProcess  # noqa: E402

MODES = ("off", "everysec", "always")


def _redis(node) -> psutil.Process:
    for child in psutil.Process(node.proc.pid).children(recursive=True):
        if "redis-server" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no embedded redis under the node")


def _io(proc: psutil.Process) -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["wchar"])


def measure(storage: Path, mode: str, images, seconds: float, clients: int, repeat: int) -> dict:
    node = NodeProcess(storage, env={"AISRV_REDIS_DURABILITY": mode,
                                     "AISRV_BACKEND_INFERPROCNUM": None,
                                     "AISRV_BATCH_AUTOTUNE": None,
                                     "AISRV_REQUEST_TIMEOUT_S": None}).start()
    try:
        bid = node.switch(btype="pytorch", model="demo-shapes")
        node.wait_switch(bid, timeout=300)
        load(node.port, images, clients, 2.0, bid)  # warm up
        redis_proc = _redis(node)
        runs = []
        for _ in range(repeat):
            disk0, handed0 = _io(redis_proc)
            row = load(node.port, images, clients, seconds, bid)
            time.sleep(1.5)  # what `everysec` still holds reaches the disk
            disk1, handed1 = _io(redis_proc)
            row["disk_per_req"] = (disk1 - disk0) / row["requests"]
            row["handed_per_req"] = (handed1 - handed0) / row["requests"]
            runs.append(row)
        aof = storage / "run" / "appendonly.aof"
        row = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        row["aof_mb"] = aof.stat().st_size / 2 ** 20 if aof.exists() else 0.0
        row["mode"] = mode
        return row
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=str(ROOT / "bench"),
                        help="where the node's storage is made (a real disk, not tmpfs)")
    args = parser.parse_args()
    rows = []
    for mode in MODES:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="durability-") as tmp:
            storage = Path(tmp) / "storage"
            ensure_demo(storage)
            images = demo_images(storage)
            rows.append(measure(storage, mode, images, args.seconds, args.clients, args.repeat))
    base = rows[0]["rate"]
    print(f"\n/detect, demo bundle, {args.clients} closed-loop clients, {args.seconds:g} s x "
          f"{args.repeat} (the run of median req/s), storage under {args.dir}")
    print("| redis.durability | req/s | vs off | p50 ms | disk bytes/req | written to the "
          "kernel bytes/req | flash/day at 1 req/s | at 10 req/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_day = r["disk_per_req"] * 86400
        print(f"| `{r['mode']}` | {r['rate']:.0f} | {r['rate'] / base:.2f} | {r['p50_ms']:.2f} | "
              f"{r['disk_per_req']:.0f} | {r['handed_per_req']:.0f} | "
              f"{per_day / 2 ** 20:.1f} MiB | {10 * per_day / 2 ** 30:.2f} GiB |")
    failures = sum(r["failures"] for r in rows)
    if failures:
        print(f"{failures} requests failed", file=sys.stderr)
    print(f"(median of per-run p50s: {statistics.median(r['p50_ms'] for r in rows):.2f} ms)")


if __name__ == "__main__":
    main()

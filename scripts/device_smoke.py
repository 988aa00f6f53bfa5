"""The device smoke: a node built for a board (the Rockchip image, an arm64 release-pack)
answers like the x86 node for the same bundles and inputs.

    python scripts/device_smoke.py prepare --storage DIR
    python scripts/device_smoke.py check --storage DIR --node-storage PATH \\
        --node URL --grpc HOST:PORT --redis-port N [--expect-types onnx,tensorflow-lite,rknn]

`prepare` writes one ONNX and one TF-Lite bundle (small real models built here with their
frameworks) and a few images into DIR, the storage the device node is started on.
`check` starts an x86 node from this checkout on a copy of DIR, then asks both nodes the
same things: ListSupportedType (gRPC), each bundle loaded over REST `/switch` and
answered over REST `/detect`, and loaded over gRPC (InitializeBackend +
ReloadModelOnBackend) and answered over gRPC InferenceLocal (a path) and InferenceRemote
(inline bytes, results read from redis db 5 as legacy clients do). Every device answer
must equal the x86 one (rtol 1e-4, atol 1e-5); it prints the largest difference seen.
DIR is where this machine sees the device node's storage, PATH where the node sees it
(a container's volume, a chroot's folder). Run with the checkout's .venv (x86): it
uses the test suite's model builders and clients. scripts/build_images.sh and
scripts/build_arm64_pack.sh run it; exits 0 when every check holds.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import numpy as np  # noqa: E402
import requests  # noqa: E402

from tests.support import onnx_models, tflite_models  # noqa: E402
from tests.support.grpc_client import Client, backend_pb2, inference_pb2, model_info  # noqa: E402
from tests.support.node import NodeProcess  # noqa: E402
from tests.support.served import assert_close  # noqa: E402

BUNDLES = {"smoke-onnx": ("onnx", onnx_models), "smoke-tflite": ("tensorflow-lite", tflite_models)}
IMAGES = 4


class DeviceNode:
    """A node someone else started (in a container, a chroot): the parts of NodeProcess
    the clients use."""

    def __init__(self, url: str, grpc: str, redis_port: int):
        self.base = url.rstrip("/")
        self.grpc_port = int(grpc.rsplit(":", 1)[1])
        self.redis_port = redis_port
        self.verify = True

    def post(self, path, body=None, timeout=300):
        return requests.post(self.base + path, json=body, timeout=timeout)

    def get(self, path, **kwargs):
        return requests.get(self.base + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    switch, wait_switch, detect = NodeProcess.switch, NodeProcess.wait_switch, NodeProcess.detect

    def log(self) -> str:
        return "(the device node's log: docker logs / the chroot's node.log)"


def prepare(storage: Path) -> None:
    for n, (name, (_btype, maker)) in enumerate(BUNDLES.items()):
        maker.write_bundle(storage, seed=10 + n, name=name)
    (storage / "input").mkdir(parents=True, exist_ok=True)
    onnx_models.write_images(storage / "input", IMAGES)
    print(f"device_smoke: {len(BUNDLES)} bundles and {IMAGES} images written to {storage}")


def stored_bundle(storage: Path, name: str):
    from aiserving.bundle.store import BundleStore

    found = [b for b in BundleStore(storage).all() if b.record.name == name]
    if not found:
        raise SystemExit(f"device_smoke: no bundle {name} in {storage}; run `prepare` first")
    return found[0]


def answers(node, storage: Path, node_storage: Path, label: str) -> dict:
    """Every answer of `node` for every bundle, door and image, keyed alike for both nodes."""
    client = Client(node)
    out = {"types": sorted(json.loads(client.backend.ListSupportedType(client.ping()).support))}
    images = sorted((storage / "input").glob("*.png"))
    try:
        for name, (btype, _maker) in BUNDLES.items():
            bundle = stored_bundle(storage, name)
            started = time.monotonic()
            bid = node.switch(btype=btype, model=bundle.fullhash)
            last = node.wait_switch(bid=bid, until=("loaded", "failed"), timeout=600)[-1]
            if last["status"] != "loaded":
                raise SystemExit(f"device_smoke: {label}: {name} did not load: {last}")
            out[f"{name} load s"] = round(time.monotonic() - started, 1)
            for image in images:
                response = node.detect(node_storage / "input" / image.name, bid=bid)
                body = response.json()
                if response.status_code != 200 or body.get("status") != "success":
                    raise SystemExit(f"device_smoke: {label}: REST {name} {image.name}: "
                                     f"{response.status_code} {body}")
                out[(name, "REST /detect", image.name)] = body["result"]
            made = client.backend.InitializeBackend(backend_pb2.BackendInfo(
                impl=bundle.record.impl, batchsize=4))
            assert made.code == 0, made.msg
            reply = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
                bid=made.msg, model=model_info(bundle.record)))
            assert reply.code == 0, reply.msg
            client.wait_running(made.msg, timeout=600)
            for image in images:
                for rpc in ("InferenceLocal", "InferenceRemote"):
                    uuid = uuidlib.uuid4().hex
                    request = inference_pb2.InferRequest(bid=made.msg, uuid=uuid)
                    if rpc == "InferenceLocal":
                        request.path = str(node_storage / "input" / image.name)
                    else:
                        request.type = "png"
                        request.base64 = base64.b64encode(image.read_bytes()).decode()
                    sent = getattr(client.inference, rpc)(request)
                    assert (sent.code, sent.msg) == (0, uuid), f"{label} {rpc}: {sent}"
                    out[(name, f"gRPC {rpc}", image.name)] = client.wait_result(uuid, timeout=300)
            for bid_ in (bid, made.msg):
                client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid_))
    finally:
        client.close()
    return out


def _without_paths(result):
    # Results echo the input's path, which is each node's own (or a private temp file).
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "path"}
    return result


def _max_difference(a, b) -> float:
    if isinstance(a, dict):
        return max([_max_difference(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list) and a and not isinstance(a[0], (int, float)):
        return max(_max_difference(x, y) for x, y in zip(a, b))
    if isinstance(a, (list, int, float)) and not isinstance(a, bool):
        return float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))) if a != [] else 0.0
    return 0.0


def check(args) -> int:
    storage, node_storage = Path(args.storage), Path(args.node_storage)
    device = DeviceNode(args.node, args.grpc, args.redis_port)
    work = Path(tempfile.mkdtemp(prefix="device-smoke-"))
    try:
        shutil.copytree(storage / "models", work / "storage" / "models")
        shutil.copytree(storage / "input", work / "storage" / "input")
        reference = NodeProcess(work / "storage").start(timeout=180)
        try:
            x86 = answers(reference, work / "storage", work / "storage", "x86")
        finally:
            reference.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    board = answers(device, storage, node_storage, "device")
    print(f"device_smoke: backends that import on the device: {', '.join(board['types'])} "
          f"(x86: {', '.join(x86['types'])})")
    missing = sorted(set(args.expect_types.split(",")) - set(board["types"])) \
        if args.expect_types else []
    worst = 0.0
    compared = 0
    for key, want in x86.items():
        if not isinstance(key, tuple):
            continue
        got = board[key]
        assert_close(_without_paths(got), _without_paths(want), rtol=1e-4, atol=1e-5,
                     where=" ".join(key))
        worst = max(worst, _max_difference(_without_paths(got), _without_paths(want)))
        compared += 1
    loads = ", ".join(f"{k[:-7]} {board[k]} s (x86 {x86[k]} s)" for k in board
                      if isinstance(k, str) and k.endswith(" load s"))
    doors = sorted({k[1] for k in x86 if isinstance(k, tuple)})
    print(f"device_smoke: {compared} answers ({len(BUNDLES)} bundles x {', '.join(doors)} x "
          f"{IMAGES} images) equal the x86 node's; largest difference {worst:.2g}")
    print(f"device_smoke: REST load to serving: {loads}")
    if missing:
        print(f"device_smoke: FAILED: expected backends missing on the device: "
              f"{', '.join(missing)}", file=sys.stderr)
        return 1
    print("device_smoke: passed")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--storage", required=True)
    c = sub.add_parser("check")
    c.add_argument("--storage", required=True)
    c.add_argument("--node-storage", required=True)
    c.add_argument("--node", required=True)
    c.add_argument("--grpc", required=True)
    c.add_argument("--redis-port", type=int, required=True)
    c.add_argument("--expect-types", default="")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.storage))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())

"""The CUDA check of the framework backends, for a machine with an NVIDIA GPU.

    PYTHONPATH=src:. python scripts/gpu_check.py [--frameworks pytorch,onnx,tensorflow]

Not part of the test suite (CI has no GPU). For each framework asked for whose
package imports here, it builds the same small real model the tests build,
runs it through the backend on the CPU and on CUDA and compares the outputs;
for PyTorch it also starts a whole node with `be.trpy.device` `cuda` and runs
the served check (REST and gRPC, batch sizes 1 and 8) against plain torch on
the CPU. It prints one line per check and exits non-zero if any ran and failed
or if CUDA is not there at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

RESULTS: list[tuple[str, str, str]] = []


def record(name: str, outcome: str, detail: str = "") -> None:
    RESULTS.append((name, outcome, detail))
    print(f"[{outcome}] {name}: {detail}", flush=True)


def check_pytorch(work: Path) -> None:
    import torch

    from aiserving.backends import create_backend
    from tests.support.bundles import tiny_model, write_bundle

    if not torch.cuda.is_available():
        record("pytorch backend", "FAIL", "torch.cuda.is_available() is False")
        return
    bundle = write_bundle(work / "torch-storage", seed=3)
    x = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    backend = create_backend("pytorch", {"be.trpy.device": "cuda", "be.trpy.mixed_mode": False})
    backend.load(bundle)
    (out,) = backend.predict([x])
    with torch.no_grad():
        expected = tiny_model(3, seed=3)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    used = backend.device
    backend.unload()
    record("pytorch backend", "PASS" if used.startswith("cuda") else "FAIL",
           f"batch of 8 on {used} ({torch.cuda.get_device_name(0)}, torch {torch.__version__}) "
           f"equals plain torch on the CPU")


def check_pytorch_node(work: Path) -> None:
    import os

    from tests.support.bundles import POST_FRAME_PY, expected_result, write_bundle, write_image
    from tests.support.node import NodeProcess
    from tests.support.served import check_served

    storage = work / "node-storage"
    bundle = write_bundle(storage, mode="structureEmbed", seed=5, post=POST_FRAME_PY)
    images = [write_image(work / f"img{n}.png", seed=n) for n in range(6)]
    os.environ["AISRV_BE_TRPY_DEVICE"] = "cuda"
    node = NodeProcess(storage, args=["--profile"]).start()
    try:
        check_served(node, bundle, images, lambda path: expected_result(bundle, path),
                     path_keys=("path",))
        on_cuda = "on cuda" in node.log()
        record("pytorch node (REST + gRPC, batch 1 and 8)", "PASS" if on_cuda else "FAIL",
               "workers served on cuda; results equal plain torch on the CPU" if on_cuda
               else "the workers did not report a cuda device")
    finally:
        node.stop()


def check_pytorch_defaults(work: Path) -> None:
    """A node on its default sizing with be.trpy.device cuda: one process per backend,
    the batch cap measured on the GPU, results right; a sealed bundle served there too."""
    import os
    import subprocess

    import numpy as np

    from aiserving.bundle import sealed
    from tests.support.bundles import reference, write_bundle, write_image
    from tests.support.node import NodeProcess

    storage = work / "defaults-storage"
    plain = write_bundle(work / "plain", mode="structureEmbed", seed=7, name="sealed-cuda")
    key = storage / "keys" / "device-key.pem"
    sealed.make_device_key(key)
    target = storage / "models" / plain.record.implhash / plain.record.version
    target.parent.mkdir(parents=True, exist_ok=True)
    sealed.seal_bundle(plain.path, target, sealed.read_public_key(sealed.public_path(key)))
    images = [write_image(work / f"def{n}.png", seed=40 + n) for n in range(4)]
    os.environ["AISRV_BE_TRPY_DEVICE"] = "cuda"
    node = NodeProcess(storage, env={"AISRV_BACKEND_INFERPROCNUM": None,
                                     "AISRV_BATCH_AUTOTUNE": None}).start()
    try:
        bid = node.switch(btype="pytorch", model=plain.fullhash)
        node.wait_switch(bid)
        sizing = node.get("/api/v1alpha/switch", params={"bid": bid}).json()["sizing"]
        tables = [line for line in node.log().splitlines() if "cost per item" in line]
        ok = sizing["processes"] == 1 and sizing["batch_cap"] is not None
        record("pytorch defaults on cuda (sizing)", "PASS" if ok else "FAIL",
               f"{sizing}; {tables[0].split(': ', 2)[-1] if tables else 'no table'}")
        wrong = []
        for path in images:
            got = node.detect(path, bid=bid).json()["result"]["scores"]
            if not np.allclose(got, reference(plain, path), rtol=1e-3, atol=1e-4):
                wrong.append(path.name)
        record("sealed bundle served on cuda", "FAIL" if wrong else "PASS",
               f"results differ for {wrong}" if wrong else
               "opened with the device key, results equal plain torch on the CPU")
        print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout,
              flush=True)
    finally:
        node.stop()


def check_onnx(work: Path) -> None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        record("onnx backend", "NOT RUN", f"onnxruntime {ort.__version__} offers {providers}: "
               "no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
        return
    from aiserving.backends import create_backend
    from tests.support import onnx_models

    bundle = onnx_models.write_bundle(work / "onnx-storage")
    x = np.random.default_rng(1).random((8, 3, 16, 16), dtype=np.float32)
    cpu = create_backend("onnx", {"be.onnx.providers": ["CPUExecutionProvider"]})
    cpu.load(bundle)
    gpu = create_backend("onnx", {"be.onnx.providers": []})
    gpu.load(bundle, "cuda:0")
    for a, b in zip(cpu.predict([x]), gpu.predict([x])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    record("onnx backend", "PASS" if gpu.device.startswith("cuda") else "FAIL",
           f"batch of 8 on {gpu.device} equals the CPU provider")


def check_tensorflow(work: Path) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        record("tensorflow backend", "NOT RUN", f"TensorFlow {tf.__version__} sees no GPU")
        return
    from aiserving.backends import create_backend
    from tests.support import tf_models

    bundle = tf_models.write_frozen_bundle(work / "tf-storage")
    feeds = tf_models.batch_feeds(8)
    # The GPU one first: a `cpu` backend hides the GPUs from the whole process.
    gpu = create_backend("tensorflow", {"be.tf.device": "gpu:0"})
    gpu.load(bundle)
    got = gpu.predict(feeds)
    cpu = create_backend("tensorflow", {"be.tf.device": "cpu"})
    cpu.load(bundle)
    for a, b in zip(cpu.predict(feeds), got):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    record("tensorflow backend", "PASS" if "gpu" in gpu.device else "FAIL",
           f"batch of 8 on {gpu.device} equals the CPU")


CHECKS = {"pytorch": (check_pytorch, check_pytorch_node, check_pytorch_defaults),
          "onnx": (check_onnx,),
          "tensorflow": (check_tensorflow,)}
PACKAGES = {"pytorch": "torch", "onnx": "onnxruntime", "tensorflow": "tensorflow"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="pytorch,onnx,tensorflow")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for name in args.frameworks.split(","):
            if importlib.util.find_spec(PACKAGES[name]) is None:
                record(f"{name} backend", "NOT RUN", f"{PACKAGES[name]} is not installed here")
                continue
            for check in CHECKS[name]:
                try:
                    check(work)
                except Exception as exc:
                    traceback.print_exc()
                    record(check.__name__, "FAIL", f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ran = [r for r in RESULTS if r[1] != "NOT RUN"]
    failed = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"{len(ran) - len(failed)} passed, {len(failed)} failed, "
          f"{len(RESULTS) - len(ran)} not run", flush=True)
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    sys.exit(main())

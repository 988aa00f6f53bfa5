"""Backend registry: backend type -> the module that implements it.

Modules are imported only when a backend of their type is created, so a box
without torch never imports torch. Adding a framework is one module plus one
line here. Backends may import bundle and errors; never broker, jobs, inference,
node or api (they know nothing of redis, HTTP or batching).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from aiserving.backends.base import Backend
from aiserving.errors import UnsupportedBackend
from aiserving.procutil import die_with_parent

log = logging.getLogger(__name__)

#: backend type -> (module, class, framework packages: at least one must be installed)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pytorch": ("aiserving.backends.pytorch", "TorchBackend", ("torch",)),
    "tensorflow": ("aiserving.backends.tensorflow", "TensorFlowBackend", ("tensorflow",)),
    "tensorflow-lite": ("aiserving.backends.tflite", "TFLiteBackend",
                        ("ai_edge_litert", "tensorflow")),
    "tensorflow-serving": ("aiserving.backends.tfserving", "TFServingBackend",
                           ("tensorflow_serving",)),
    "mxnet": ("aiserving.backends.mxnet", "MXNetBackend", ("mxnet",)),
    "rknn": ("aiserving.backends.rknn", "RKNNBackend", ("rknnlite",)),
    "onnx": ("aiserving.backends.onnx", "OnnxBackend", ("onnxruntime",)),
}


def backend_class(type_name: str) -> type[Backend]:
    try:
        module_name, class_name, _ = REGISTRY[type_name]
    except KeyError:
        raise UnsupportedBackend(f"unknown backend type {type_name!r}; this node knows "
                                 f"{', '.join(sorted(REGISTRY))}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnsupportedBackend(f"backend type {type_name!r} cannot run on this node: "
                                 f"{exc}") from None
    return getattr(module, class_name)


def create_backend(type_name: str, settings: dict[str, Any]) -> Backend:
    return backend_class(type_name)(settings)


_probed: dict[str, bool] = {}
_probe_lock = threading.Lock()


def supported_types() -> list[str]:
    """Backend types whose backend module, framework included, imports on this node.

    Each backend module is imported once, in a child process of its own (all at
    the same time): a framework that is installed but broken (a wrong numpy, a
    missing CUDA library) is not supported, and the node daemon itself never
    imports a framework.
    """
    with _probe_lock:
        todo = {t: spec for t, spec in REGISTRY.items() if t not in _probed}
        children = {}
        for type_name, (module, _, frameworks) in todo.items():
            if not any(_installed(f) for f in frameworks):
                _probed[type_name] = False
            else:
                children[type_name] = _start_probe(module)
        for type_name, child in children.items():
            _probed[type_name] = _probe_result(REGISTRY[type_name][0], child)
        return sorted(t for t, ok in _probed.items() if ok)


def probed_types() -> list[str] | None:
    """`supported_types()` once its probe has finished; None while it still runs
    (never waits: a caller that must not block decides what to do meanwhile)."""
    if _probe_lock.acquire(blocking=False):
        try:
            if all(t in _probed for t in REGISTRY):
                return sorted(t for t, ok in _probed.items() if ok)
        finally:
            _probe_lock.release()
    return None


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _start_probe(module: str) -> subprocess.Popen:
    # The child sees what this process sees: the source tree or the release-pack.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    # Loads no longer wait for the probe, so a node may stop while one still imports:
    # the child goes with the thread that started it.
    return subprocess.Popen([sys.executable, "-c", f"import {module}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: die_with_parent(signal.SIGKILL))


def _probe_result(module: str, child: subprocess.Popen) -> bool:
    try:
        _, stderr = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        log.warning("importing %s took over 300 s: its backend is left out", module)
        return False
    if child.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no message)"])[-1]
        log.warning("%s does not import (%s): its backend is left out", module, last)
    return child.returncode == 0

"""Backend registry: backend type -> the module that implements it.

Modules are imported only when a backend of their type is created, so a box
without torch never imports torch. Adding a framework is one module plus one
line here.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
import threading
from typing import Any

from aiserving.backends.base import Backend
from aiserving.errors import UnsupportedBackend

log = logging.getLogger(__name__)

#: backend type -> (module, class, framework module whose import proves support)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "pytorch": ("aiserving.backends.pytorch", "TorchBackend", "torch"),
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
    """Backend types whose framework actually imports on this node.

    Each framework is imported once, in a child process: a framework that is
    installed but broken (a wrong numpy, a missing CUDA library) is not
    supported, and the node daemon itself never imports a framework.
    """
    with _probe_lock:
        for type_name, (_, _, framework) in REGISTRY.items():
            if type_name not in _probed:
                _probed[type_name] = _imports(framework)
        return sorted(t for t, ok in _probed.items() if ok)


def _imports(framework: str) -> bool:
    if importlib.util.find_spec(framework) is None:
        return False
    try:
        done = subprocess.run([sys.executable, "-c", f"import {framework}"], capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        log.warning("importing %s took over 300 s: its backend is left out", framework)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        log.warning("%s is installed but does not import (%s): its backend is left out",
                    framework, last)
    return done.returncode == 0

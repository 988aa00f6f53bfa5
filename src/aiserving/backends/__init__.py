"""Backend registry: backend type -> the module that implements it.

Modules are imported only when a backend of their type is created, so a box
without torch never imports torch. Adding a framework is one module plus one
line here.
"""

from __future__ import annotations

import importlib
import logging
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


def supported_types() -> list[str]:
    """Backend types whose framework actually imports here (checked without importing it)."""
    import importlib.util

    return [t for t, (_, _, framework) in sorted(REGISTRY.items())
            if importlib.util.find_spec(framework) is not None]

"""The one interface every framework backend implements.

A backend knows nothing of redis, HTTP or batching policy: it loads one
bundle on one device, predicts a batch, and releases what it holds.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from aiserving.bundle.store import Bundle


class Backend(ABC):
    #: the `impl` backend type this class serves, e.g. "pytorch"
    type_name: str = ""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    @abstractmethod
    def load(self, bundle: Bundle, device: str | None = None) -> None:
        """Load the bundle's model; raise BundleError for a malformed bundle."""

    @abstractmethod
    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch: one array per model input (per-item inputs carry a
        leading batch axis); return one array per model output, batch axis first."""

    def input_ranks(self) -> list[int | None] | None:
        """Rank of each model input, batch axis included, where the framework
        knows it (used to tell an old bundle's batch-of-one from a real axis)."""
        return None

    def unload(self) -> None:
        """Release the model and its device memory."""

    @property
    def device(self) -> str:
        return "cpu"


def cpu_threads(settings: dict[str, Any], key: str = "backend.threads") -> int:
    """CPU threads a framework may use in one inference process.

    0 means half the cores (at least 1): intra-op threads that outnumber free
    cores spin against pre/post-processing, the fronts and redis and make every
    batch slower, not faster.
    """
    return int(settings.get(key, 0) or 0) or max(1, (os.cpu_count() or 2) // 2)

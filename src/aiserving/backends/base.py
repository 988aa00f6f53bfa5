"""The one interface every framework backend implements.

A backend knows nothing of redis, HTTP or batching policy: it loads one
bundle on one device, predicts a batch, and releases what it holds.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Sequence

from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError

if TYPE_CHECKING:  # the node daemon imports the registry, and needs no numpy
    import numpy as np


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

    def tensor_specs(self) -> dict | None:
        """The model's tensors where the framework knows them, for Open Inference
        Protocol metadata: {"inputs": [...], "outputs": [...]}, each a list (or None:
        unknown) of {"name", "dtype" (numpy name, or None), "shape" (list, -1 for a
        variable axis, or None)} in feed / output order. What is left unknown is
        filled in from a trial batch at load (default: everything)."""
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
    batch slower, not faster. (The node fills in its own choice before a worker
    starts: the cores shared out among the backend's processes.)
    """
    return int(settings.get(key, 0) or 0) or max(1, (os.cpu_count() or 2) // 2)


def pick_by_name(items: list, names, what: str, fullhash: str, name_of: Callable[[Any], str],
                 every: bool = False) -> list:
    """A model's inputs or outputs in the order `modelext` names them (the model's own
    order if it names none). "x:0" also matches a tensor named "x". With `every`,
    the names must cover each of them once."""
    if not names:
        return list(items)
    known = {name_of(i): i for i in items}
    listing = ", ".join(repr(name_of(i)) for i in items)
    picked = []
    for name in names:
        item = known.get(str(name))
        if item is None and str(name).endswith(":0"):
            item = known.get(str(name)[:-2])
        if item is None:
            raise BundleError(f"bundle {fullhash}: modelext tensors.{what} names {name!r}, "
                              f"which the model does not have; its {what}s are: {listing}")
        picked.append(item)
    if every and sorted(map(id, picked)) != sorted(map(id, items)):
        raise BundleError(f"bundle {fullhash}: modelext tensors.{what} must name each of the "
                          f"model's {what}s once; they are: {listing}")
    return picked

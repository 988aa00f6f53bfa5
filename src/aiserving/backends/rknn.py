"""RKNN backend: `rknn.*`, a `.rknn` model run on a Rockchip NPU by rknn-toolkit-lite2.

`model_core` is the .rknn file. It runs through `rknnlite.api.RKNNLite`:
`load_rknn(path)`, `init_runtime(...)`, `inference(inputs=[...])`, `release()`.
load_rknn and init_runtime return 0 on success and -1 on failure (the toolkit
logs why); inference returns a list of numpy arrays, or None on failure. Any
other answer is an error naming the call: a BundleError while loading, a
RuntimeError from predict (the pipeline fails the batch with it).

init_runtime gets no `target`: on the board, target None is the NPU inside (a
target name makes the toolkit look for a device over adb). It gets `core_mask`
only where setting `be.rknnpy.target` has several NPU cores (rk3588: three,
rk3576: two), from setting `be.rknnpy.core_mask` (auto, 0, 1, 2, 0_1, 0_1_2,
all -> RKNNLite.NPU_CORE_*) or a backend device `npu:<mask>`; single-core
targets (rk3566, rk3568, rk3562, rk3399pro, ...) are called without one.

Batching: a .rknn model is compiled for fixed input shapes, usually batch 1,
and rknn-toolkit-lite2 offers no query of the input attributes. modelext
`"batch": N` gives the batch the model was built with (rknn_batch_size,
default 1). A batch of items runs in ceil(items / N) inference calls, each
with exactly N items (the last one padded by repeating its last item; the
padded rows are dropped). Inputs marked `input_type` "0" in modelext are
handed to every call as they are. modelext `"data_format"` ("nhwc" or "nchw",
or one per input) is passed to inference; without it the toolkit's default
(nhwc) applies. float64 feeds are cast to float32; other types pass through
(the runtime converts or quantizes them to what the model was built for).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from rknnlite.api import RKNNLite

from aiserving.backends.base import Backend
from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

#: be.rknnpy.core_mask value -> (RKNNLite constant, cores the target needs for it)
_CORE_MASKS = {
    "auto": ("NPU_CORE_AUTO", 1), "0": ("NPU_CORE_0", 1), "1": ("NPU_CORE_1", 2),
    "2": ("NPU_CORE_2", 3), "0_1": ("NPU_CORE_0_1", 2), "0_1_2": ("NPU_CORE_0_1_2", 3),
    "all": ("NPU_CORE_ALL", 1),
}
#: targets with more than one NPU core (rknn-toolkit-lite2 honours core_mask only there)
_NPU_CORES = {"rk3588": 3, "rk3576": 2}
_FORMATS = ("nhwc", "nchw")


class RKNNBackend(Backend):
    type_name = "rknn"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._rknn = None
        self._mask: str | None = None
        self._batch = 1
        self._shared: set[int] = set()
        self._data_format = None

    @property
    def device(self) -> str:
        return "npu" if self._mask is None else f"npu:{self._mask}"

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        where = f"bundle {bundle.fullhash}"
        path = bundle.readable_path("model_core")
        ext = bundle.record.ext
        self._batch = _batch_of(ext.get("batch", 1), where)
        self._data_format = _data_format_of(ext.get("data_format"), where)
        types = (ext.get("tensors") or {}).get("input_type") or []
        self._shared = {k for k, t in enumerate(types) if str(t) == "0"}
        self._mask, kwargs = self._init_args(device)
        rknn = RKNNLite()
        try:
            ret = rknn.load_rknn(str(path))
            if ret != 0:
                raise BundleError(f"{where}: RKNNLite.load_rknn(model_core) returned {ret}: the "
                                  "file cannot be read (rknn-toolkit-lite2 logged why)")
            ret = rknn.init_runtime(**kwargs)
            if ret != 0:
                args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
                raise BundleError(f"{where}: RKNNLite.init_runtime({args}) returned {ret}: "
                                  "model_core is not a .rknn model this NPU and runtime can run "
                                  "(rknn-toolkit-lite2 logged why)")
        except BundleError:
            rknn.release()
            raise
        except Exception as exc:
            rknn.release()
            raise BundleError(f"{where}: rknn-toolkit-lite2 failed to load model_core: "
                              f"{type(exc).__name__}: {exc}") from None
        self._rknn = rknn

    def _init_args(self, device: str | None) -> tuple[str | None, dict]:
        """(core mask name or None, init_runtime keyword arguments) for this target."""
        target = str(self.settings.get("be.rknnpy.target", "")).strip().lower()
        mask = str(self.settings.get("be.rknnpy.core_mask", "auto")).strip().lower()
        if device:
            kind, _, named = str(device).strip().lower().partition(":")
            if kind == "npu" and named:
                mask = named
            elif kind != "npu":
                log.warning("rknn backends run on the NPU: device %r is ignored", device)
        if mask not in _CORE_MASKS:
            raise ConfigError(f"NPU core mask {mask!r} is not one of "
                              f"{', '.join(_CORE_MASKS)} (be.rknnpy.core_mask, device npu:<mask>)")
        # rk3588s and friends share their family's NPU
        cores = next((c for name, c in _NPU_CORES.items() if target.startswith(name)), 1)
        if cores == 1:
            if mask != "auto":
                log.warning("NPU core mask %s is ignored: be.rknnpy.target %s has one NPU core",
                            mask, target or "(empty)")
            return None, {}
        constant, needs = _CORE_MASKS[mask]
        if needs > cores:
            raise ConfigError(f"NPU core mask {mask!r} needs {needs} NPU cores; "
                              f"be.rknnpy.target {target} has {cores}")
        return mask, {"core_mask": getattr(RKNNLite, constant)}

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = [_cast(f) for f in feeds]
        per_item = [k for k in range(len(feeds)) if k not in self._shared]
        n = len(feeds[per_item[0]]) if per_item else 1
        if any(len(feeds[k]) != n for k in per_item):
            raise ValueError("per-item inputs of one batch have different lengths")
        size = self._batch
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            take = min(size, n - start)
            inputs = [f if k in self._shared else _padded(f[start:start + take], size)
                      for k, f in enumerate(feeds)]
            parts.append([_rows(o, size, take) for o in self._inference(inputs)])
        return [np.concatenate(column) for column in zip(*parts)]

    def _inference(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {"inputs": inputs}
        if self._data_format is not None:
            kwargs["data_format"] = self._data_format
        outputs = self._rknn.inference(**kwargs)
        if outputs is None:
            shapes = ", ".join(f"{a.shape} {a.dtype}" for a in inputs)
            raise RuntimeError(f"RKNNLite.inference returned None (it failed; rknn-toolkit-lite2 "
                               f"logged why) for inputs {shapes}; a model built for "
                               f"batch {self._batch} (modelext 'batch') takes exactly that "
                               f"many items per call")
        if not isinstance(outputs, (list, tuple)):
            raise RuntimeError(f"RKNNLite.inference returned {type(outputs).__name__}, "
                               "not a list of arrays")
        return [np.asarray(o) for o in outputs]

    def unload(self) -> None:
        if self._rknn is not None:
            self._rknn.release()
        self._rknn = None


def _batch_of(value, where: str) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise BundleError(f"{where}: modelext 'batch' must be the batch size the .rknn model "
                          f"was built with (1 or more), not {value!r}")
    return int(value)


def _data_format_of(value, where: str):
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v.lower() in _FORMATS for v in values):
        raise BundleError(f"{where}: modelext 'data_format' must be 'nhwc' or 'nchw' (or a "
                          f"list, one per input), not {value!r}")
    return [v.lower() for v in value] if isinstance(value, list) else value.lower()


def _cast(feed) -> np.ndarray:
    array = np.ascontiguousarray(feed)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _padded(part: np.ndarray, size: int) -> np.ndarray:
    if len(part) == size:
        return part
    return np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])


def _rows(output: np.ndarray, size: int, take: int) -> np.ndarray:
    """The first `take` rows of one call's output, batch axis first."""
    if output.ndim >= 1 and output.shape[0] == size:
        return output[:take]
    if size == 1:
        return output[None]  # an output without a batch axis: one item's
    raise RuntimeError(f"the model returned an output of shape {output.shape} for a call of "
                       f"{size} items; expected the batch axis first")

"""TF-Lite backend: `tensorflow-lite.<any model type>`.

`model_core` is a .tflite flatbuffer. It is read into memory and handed to the
interpreter as bytes (so a model decrypted in memory loads the same way). The
interpreter is LiteRT's (`ai_edge_litert`, what edge boards ship) where it is
installed, else TensorFlow's `tf.lite.Interpreter`; it runs on the CPU with
`backend.threads` threads.

Inputs are fed in the interpreter's order, or in the order of the tensor names
modelext `tensors.input` lists; outputs come in the interpreter's order unless
`tensors.output` names them. A name "x:0" also matches a tensor "x" (TensorFlow
bundles write graph names). Inputs marked "0" in `tensors.input_type` hold one
value for the whole batch and are never resized.

Batches: where the input's batch axis is dynamic (shape_signature -1) the
inputs are resized to the batch and it runs in one call. Many edge models fix
the batch axis at 1; for those a resize is tried once, on the first batch of
several distinct items, and kept only if it allocates and gives the same
results as running the items one by one (a model converted for batch 1 may
resize without complaint yet mix the items, e.g. through a reshape to [1, -1]).
Otherwise every batch runs item by item. Which mode is used is logged once.

Quantized models: where an input is an 8/16-bit integer tensor with a scale and
the bundle feeds floats, the floats are quantized with the input's (scale,
zero_point), and the quantized outputs of that call are dequantized to float32
with theirs. A bundle that feeds integers gets the raw integer outputs, as the
old product gave them.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from aiserving.backends.base import Backend, cpu_threads, pick_by_name
from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError

log = logging.getLogger(__name__)

try:
    from ai_edge_litert.interpreter import Interpreter
    RUNTIME = "LiteRT (ai_edge_litert)"
except ImportError:  # no LiteRT wheel for this platform: TensorFlow's own interpreter
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
    RUNTIME = f"tf.lite.Interpreter (tensorflow {tf.__version__})"
log.info("TF-Lite models run on %s", RUNTIME)

# Batched and item-by-item results of a model that really is batch-agnostic
# differ by float rounding only.
_RTOL, _ATOL = 1e-4, 1e-5


class TFLiteBackend(Backend):
    type_name = "tensorflow-lite"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._interp = None
        self._fullhash = ""
        self._inputs: list[dict] = []  # input details, in feed order
        self._outputs: list[dict] = []  # output details, in output order
        self._shared: list[bool] = []  # per input: one value per batch (input_type "0")
        self._base: list[tuple] = []  # per input: the shape the model was converted with
        self._shapes: list[tuple] = []  # per input: the shape allocated now
        self._dynamic = False  # every per-item input's batch axis is -1
        self._mode = None  # "batched", "single", or None: fixed batch axis not checked yet

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        if device and device != "cpu":
            log.warning("bundle %s: TF-Lite runs on the cpu here; device %s is ignored",
                        bundle.fullhash, device)
        self._fullhash = fh = bundle.fullhash
        content = bundle.read("model_core")
        if not content:
            raise BundleError(f"bundle {fh}: model_core is empty (a .tflite model is needed)")
        try:
            interp = Interpreter(model_content=content, num_threads=cpu_threads(self.settings))
            interp.allocate_tensors()
        except Exception as exc:
            raise BundleError(f"bundle {fh}: model_core is not a TF-Lite model {RUNTIME} can "
                              f"load: {type(exc).__name__}: {exc}") from None
        tensors = _tensors_ext(bundle)
        self._inputs = _by_name(interp.get_input_details(), tensors.get("input"), "input", fh,
                                every=True)
        self._outputs = _by_name(interp.get_output_details(), tensors.get("output"), "output", fh)
        types = [str(t) for t in tensors.get("input_type") or []]
        self._shared = [k < len(types) and types[k] == "0" for k in range(len(self._inputs))]
        self._base = [tuple(int(n) for n in d["shape"]) for d in self._inputs]
        self._shapes = list(self._base)
        self._interp = interp
        batch_dims = [_signature(d)[0] for d, s in zip(self._inputs, self._shared)
                      if not s and len(_signature(d))]
        self._dynamic = all(n == -1 for n in batch_dims)
        self._mode = "batched" if self._dynamic else None
        if self._dynamic:
            log.info("bundle %s: the batch axis is dynamic: each batch runs in one call", fh)

    def input_ranks(self) -> list[int | None] | None:
        return [len(_signature(d)) for d in self._inputs]

    def tensor_specs(self) -> dict | None:
        # A quantized tensor's type is left to the trial batch: the node quantizes
        # float feeds and dequantizes outputs, so callers see floats.
        def spec(d: dict) -> dict:
            dtype = np.dtype(d["dtype"])
            quantized = d["quantization"][0] and dtype.kind in "iu"
            return {"name": d["name"], "dtype": None if quantized or dtype.kind in "OSU"
                    else dtype.name, "shape": list(_signature(d))}
        return {"inputs": [spec(d) for d in self._inputs],
                "outputs": [spec(d) for d in self._outputs]}

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(feeds) != len(self._inputs):
            raise ValueError(f"the model takes {len(self._inputs)} input(s), got {len(feeds)}")
        feeds, quantized = self._cast(feeds)
        n = next((len(f) for f, s in zip(feeds, self._shared) if not s and f.ndim), 1)
        if self._mode == "batched":
            self._allocate(self._batch_shapes(feeds, n), strict=self._dynamic)
            outputs = self._invoke(feeds)
        elif all(s or f.shape[:1] == b[:1] for f, s, b in zip(feeds, self._shared, self._base)):
            self._allocate(self._base, strict=False)  # the batch the model was made for
            outputs = self._invoke(feeds)
        elif self._mode == "single" or not _items_differ(feeds, self._shared):
            outputs = self._one_by_one(feeds, n)
        else:
            outputs = self._try_batched(feeds, n)
        if quantized:
            outputs = [_dequantize(o, d) for o, d in zip(outputs, self._outputs)]
        return outputs

    def unload(self) -> None:
        self._interp = None
        self._inputs, self._outputs, self._shapes = [], [], []

    # --- internals ------------------------------------------------------------

    def _cast(self, feeds: Sequence[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        out, quantized = [], False
        for d, f in zip(self._inputs, feeds):
            f = np.asarray(f)
            dtype = np.dtype(d["dtype"])
            scale, zero = d["quantization"]
            if scale and dtype.kind in "iu" and f.dtype.kind == "f":
                info = np.iinfo(dtype)
                f = np.clip(np.round(f / scale + zero), info.min, info.max)
                quantized = True
            if dtype.kind not in "OSU":
                f = np.ascontiguousarray(f, dtype=dtype)
            out.append(f)
        return out, quantized

    def _batch_shapes(self, feeds: Sequence[np.ndarray], n: int) -> list[tuple]:
        # A dynamic model takes the feeds' shapes (strict resizing refuses fixed axes);
        # a fixed one only ever has its batch axis changed.
        if self._dynamic:
            return [f.shape for f in feeds]
        return [(n, *b[1:]) if b else b for b in self._base]

    def _allocate(self, shapes: Sequence[tuple], strict: bool) -> None:
        """Resize the per-item inputs to `shapes`, where they differ from now."""
        want = [cur if shared else tuple(int(n) for n in shape)
                for cur, shape, shared in zip(self._shapes, shapes, self._shared)]
        if want == self._shapes:
            return
        try:
            for d, shape, cur in zip(self._inputs, want, self._shapes):
                if shape != cur:
                    self._interp.resize_tensor_input(d["index"], list(shape), strict=strict)
            self._interp.allocate_tensors()
        except Exception:
            self._restore()
            raise
        self._shapes = want

    def _restore(self) -> None:
        for d, shape in zip(self._inputs, self._base):
            self._interp.resize_tensor_input(d["index"], list(shape), strict=False)
        self._interp.allocate_tensors()
        self._shapes = list(self._base)

    def _invoke(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        for d, f in zip(self._inputs, feeds):
            self._interp.set_tensor(d["index"], f)
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]) for d in self._outputs]

    def _one_by_one(self, feeds: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
        self._allocate(self._base, strict=False)
        parts = [self._invoke([f if s else f[i:i + 1] for f, s in zip(feeds, self._shared)])
                 for i in range(n)]
        return [np.concatenate(p) for p in zip(*parts)]

    def _try_batched(self, feeds: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
        """First batch of distinct items on a fixed batch axis: may it be resized?"""
        single = self._one_by_one(feeds, n)
        reason = ""
        try:
            self._allocate(self._batch_shapes(feeds, n), strict=False)
            batched = self._invoke(feeds)
            if not all(b.shape == s.shape and np.allclose(b, s, rtol=_RTOL, atol=_ATOL)
                       for b, s in zip(batched, single)):
                reason = "a resized call gives other results than item by item"
        except Exception as exc:
            reason = f"it cannot be resized ({type(exc).__name__}: {exc})"
        if reason:
            self._mode = "single"
            self._restore()
            log.info("bundle %s: the batch axis is fixed and %s: batches run item by item",
                     self._fullhash, reason)
        else:
            self._mode = "batched"
            log.info("bundle %s: the batch axis is fixed but resizes to %d with the same "
                     "results: each batch runs in one call", self._fullhash, n)
        return single


def _signature(detail: dict) -> tuple:
    sig = detail.get("shape_signature")
    return tuple(int(n) for n in (sig if sig is not None and len(sig) else detail["shape"]))


def _items_differ(feeds: Sequence[np.ndarray], shared: Sequence[bool]) -> bool:
    # Identical items cannot show whether a resized call mixes them.
    return any(not s and f.ndim and len(f) > 1 and not (f == f[:1]).all()
               for f, s in zip(feeds, shared))


def _dequantize(out: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale or out.dtype.kind not in "iu":
        return out
    return ((out.astype(np.float32) - zero) * scale).astype(np.float32)


def _tensors_ext(bundle: Bundle) -> dict:
    tensors = bundle.record.ext.get("tensors") or {}
    if not isinstance(tensors, dict):
        raise BundleError(f"bundle {bundle.fullhash}: modelext 'tensors' must be an object")
    for key in ("input", "output", "input_type"):
        value = tensors.get(key)
        if value is not None and not isinstance(value, list):
            raise BundleError(f"bundle {bundle.fullhash}: modelext tensors.{key} must be a list")
    return tensors


def _by_name(items: list, names, what: str, fullhash: str, every: bool = False) -> list:
    return pick_by_name(items, names, what, fullhash, lambda d: d["name"], every)

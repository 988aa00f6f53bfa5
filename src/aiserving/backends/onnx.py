"""ONNX Runtime backend: `onnx.<any model type>`.

`model_core` is the .onnx file. It is read into memory and the session is made
from its bytes (so a model decrypted in memory loads the same way), with
`backend.threads` intra-op threads and one inter-op thread.

Inputs are the session's inputs in order, or in the order of the names modelext
`tensors.input` lists; outputs come in the session's order unless
`tensors.output` names them. A name "x:0" also matches a tensor "x" only where
the model has no tensor "x:0". Inputs marked "0" in `tensors.input_type` hold
one value for the whole batch.

Execution providers: setting `be.onnx.providers` in order of preference; empty:
CUDA where this onnxruntime offers it, then the CPU. Providers it lacks are
skipped with a warning; TensorRT is used only when named. The load's `device`
("cuda:N" / "cpu") picks the CUDA device or forces the CPU.

Batches: where the batch axis is symbolic or -1 a batch runs in one call; a
model whose batch axis is fixed at 1 runs item by item (logged once).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from aiserving.backends.base import Backend, cpu_threads, pick_by_name
from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_GPU_PROVIDERS = (CUDA, TENSORRT)

_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


class OnnxBackend(Backend):
    type_name = "onnx"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._session = None
        self._fullhash = ""
        self._device = "cpu"
        self._inputs: list = []  # NodeArgs, in feed order
        self._output_names: list[str] = []
        self._shared: list[bool] = []  # per input: one value per batch (input_type "0")
        self._fixed_batch: int | None = None  # the batch axis fixed by the model, if any
        self._logged_single = False

    @property
    def device(self) -> str:
        return self._device

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        self._fullhash = fh = bundle.fullhash
        content = bundle.read("model_core")
        if not content:
            raise BundleError(f"bundle {fh}: model_core is empty (an .onnx model is needed)")
        wanted = self.settings.get("be.onnx.providers") or []
        if isinstance(wanted, str):  # an unparsed settings value: "A,B"
            wanted = [p.strip() for p in wanted.split(",") if p.strip()]
        providers, gpu = _providers(wanted, device, fh)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads(self.settings)
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(content, sess_options=options, providers=providers)
        except Exception as exc:
            raise BundleError(f"bundle {fh}: model_core is not an ONNX model onnxruntime "
                              f"{ort.__version__} can load: {type(exc).__name__}: {exc}") from None
        tensors = bundle.record.ext.get("tensors") or {}
        if not isinstance(tensors, dict) or not all(
                isinstance(tensors.get(k), (list, type(None))) for k in ("input", "output",
                                                                           "input_type")):
            raise BundleError(f"bundle {fh}: modelext 'tensors' must be an object of lists")
        self._inputs = _by_name(session.get_inputs(), tensors.get("input"), "input", fh,
                                every=True)
        self._output_names = [o.name for o in _by_name(session.get_outputs(),
                                                       tensors.get("output"), "output", fh)]
        types = [str(t) for t in tensors.get("input_type") or []]
        self._shared = [k < len(types) and types[k] == "0" for k in range(len(self._inputs))]
        fixed = {i.shape[0] for i, s in zip(self._inputs, self._shared)
                 if not s and i.shape and _is_fixed(i.shape[0])}
        self._fixed_batch = min(fixed) if fixed else None
        self._session = session
        active = session.get_providers()
        self._device = f"cuda:{gpu}" if any(p in active for p in _GPU_PROVIDERS) else "cpu"
        log.info("bundle %s: onnxruntime %s on %s (providers %s)", fh, ort.__version__,
                 self._device, ", ".join(active))

    def input_ranks(self) -> list[int | None] | None:
        return [len(i.shape) if i.shape is not None else None for i in self._inputs]

    def tensor_specs(self) -> dict | None:
        outputs = {o.name: o for o in self._session.get_outputs()}
        return {"inputs": [_spec(i) for i in self._inputs],
                "outputs": [_spec(outputs[n]) for n in self._output_names]}

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(feeds) != len(self._inputs):
            raise ValueError(f"the model takes {len(self._inputs)} input(s), got {len(feeds)}")
        feeds = [_cast(f, i.type) for f, i in zip(feeds, self._inputs)]
        n = next((len(f) for f, s in zip(feeds, self._shared) if not s and f.ndim), 1)
        if self._fixed_batch is None or n == self._fixed_batch:
            return self._run(feeds)
        if self._fixed_batch != 1:
            raise ValueError(f"the model's batch axis is fixed at {self._fixed_batch}; "
                             f"a batch of {n} cannot run")
        if not self._logged_single:
            self._logged_single = True
            log.info("bundle %s: the batch axis is fixed at 1: batches run item by item",
                     self._fullhash)
        parts = [self._run([f if s else f[i:i + 1] for f, s in zip(feeds, self._shared)])
                 for i in range(n)]
        return [np.concatenate(p) for p in zip(*parts)]

    def unload(self) -> None:
        self._session = None
        self._inputs = []

    def _run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        named = {i.name: f for i, f in zip(self._inputs, feeds)}
        return [np.asarray(o) for o in self._session.run(self._output_names, named)]


def _providers(wanted: Sequence[str], device: str | None, fullhash: str) -> tuple[list, int]:
    """The providers to ask for (with their options) and the CUDA device index."""
    available = ort.get_available_providers()
    names = list(wanted) or [p for p in (CUDA, CPU) if p in available]
    gpu = 0
    if device:
        match = re.fullmatch(r"(cpu|cuda|gpu)(?::(\d+))?", device)
        if match is None:
            log.warning("bundle %s: device %r is neither cpu nor cuda:N; ignored", fullhash, device)
        elif match.group(1) == "cpu":
            names = [CPU]
        else:
            gpu = int(match.group(2) or 0)
            if not any(p in names for p in _GPU_PROVIDERS):
                names.insert(0, CUDA)  # the load asked for a GPU explicitly
    chosen = []
    for name in dict.fromkeys(names):
        if name not in available:
            log.warning("bundle %s: onnxruntime %s has no %s (it has %s): skipped", fullhash,
                        ort.__version__, name, ", ".join(available))
            continue
        chosen.append((name, {"device_id": gpu}) if name in _GPU_PROVIDERS else name)
    if CPU not in chosen:
        chosen.append(CPU)  # what onnxruntime falls back to for nodes the others lack
    return chosen, gpu


def _is_fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _spec(arg) -> dict:
    dtype = _DTYPES.get(arg.type)
    return {"name": arg.name, "dtype": np.dtype(dtype).name if dtype is not None else None,
            "shape": [d if _is_fixed(d) else -1 for d in arg.shape]
            if arg.shape is not None else None}


def _cast(feed: np.ndarray, onnx_type: str) -> np.ndarray:
    feed = np.asarray(feed)
    dtype = _DTYPES.get(onnx_type)
    return np.ascontiguousarray(feed, dtype=dtype) if dtype is not None else feed


def _by_name(items: list, names, what: str, fullhash: str, every: bool = False) -> list:
    return pick_by_name(items, names, what, fullhash, lambda a: a.name, every)

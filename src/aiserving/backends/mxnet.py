"""MXNet backend: `mxnet.*`, a Gluon model as `HybridBlock.export()` writes it.

The bundle folder holds `<prefix>-symbol.json` (the graph) and
`<prefix>-NNNN.params` (the weights of epoch NNNN); there is no `model_core`.
modelext (all keys optional):

    {"prefix": "model", "epoch": 0, "tensors": {"input": ["data"]}}

`prefix` defaults to "model"; `epoch` to the highest `<prefix>-NNNN.params`
present; the input names to ["data"] (what `export()` names a single input).
The model is loaded with `gluon.SymbolBlock.imports` on the context of the
backend's `device`, else setting `be.mxnet.device` (`cpu`, `gpu`, `gpu:N`);
where no such GPU is usable it warns and runs on the CPU. A batch is one
forward call; feeds are cast to the weights' dtype (float32 for exported
Gluon models); a model with several outputs gives one array per output.

Nothing is unpickled: the symbol file is JSON, and the .params file is MXNet's
own NDArray list format (a binary header with magic 0x112, then raw arrays),
parsed by MXNet's C++ `MXNDArrayLoad`, not by Python's pickle.

Threads: MXNet fixes its operator (OpenMP) thread count once, when it is
imported; setting it later has no effect. This module therefore sets
`MXNET_OMP_MAX_THREADS` for the import from `backend.threads` as the
environment gives it (`AISRV_BACKEND_THREADS`, default half the cores, which is
also MXNet's own default on x86), unless `OMP_NUM_THREADS` or
`MXNET_OMP_MAX_THREADS` is set already. A `backend.threads` that only a
settings file gives cannot take effect: load() warns.

MXNet 1.9 uses `numpy.bool`, which numpy 1.24 removed: the alias is restored
here, before MXNet is imported, only where numpy lacks it.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import warnings
from typing import Any, Sequence

import numpy as np

from aiserving.backends.base import Backend, cpu_threads
from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError, ConfigError

# vars(), not hasattr(): numpy 1.2x's module __getattr__ warns on every probe of "bool".
if "bool" not in vars(np):
    np.bool = bool


def _import_threads() -> int | None:
    if "OMP_NUM_THREADS" in os.environ or "MXNET_OMP_MAX_THREADS" in os.environ:
        return None  # the operator chose: leave it to MXNet
    try:
        return cpu_threads({"backend.threads": os.environ.get("AISRV_BACKEND_THREADS", "0")})
    except ValueError:
        return cpu_threads({})


#: operator threads MXNet was imported with; None: chosen by OMP_NUM_THREADS/MXNET_OMP_MAX_THREADS
IMPORT_THREADS = _import_threads()
if IMPORT_THREADS is not None:
    os.environ["MXNET_OMP_MAX_THREADS"] = str(IMPORT_THREADS)
try:
    import mxnet as mx
    from mxnet import gluon
finally:
    if IMPORT_THREADS is not None:
        os.environ.pop("MXNET_OMP_MAX_THREADS", None)

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"(cpu|gpu|cuda)(?::(\d+))?")


class MXNetBackend(Backend):
    type_name = "mxnet"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._block = None
        self._ctx = mx.cpu()
        self._inputs: list[str] = []
        self._dtype = np.float32

    @property
    def device(self) -> str:
        return "cpu" if self._ctx.device_type == "cpu" else f"gpu:{self._ctx.device_id}"

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        self._ctx = _pick_context(device or self.settings.get("be.mxnet.device", "cpu"))
        self._check_threads()
        where = f"bundle {bundle.fullhash}"
        bundle.refuse_encrypted("MXNet bundles have no model_core, the one file the legacy "
                                "format encrypts")
        ext = bundle.record.ext
        prefix = ext.get("prefix", "model")
        if not isinstance(prefix, str) or not prefix or "/" in prefix or "\\" in prefix \
                or prefix.startswith("."):
            raise BundleError(f"{where}: modelext 'prefix' must be a file name prefix such as "
                              f"\"model\", not {prefix!r}")
        names = (ext.get("tensors") or {}).get("input") or ["data"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise BundleError(f"{where}: modelext 'tensors.input' must be a list of input "
                              f"names, not {names!r}")
        symbol_file = bundle.file(f"{prefix}-symbol.json")
        params_file = _params_file(bundle, prefix, ext.get("epoch"))
        # A sealed bundle's files open as anonymous in-memory files; plain ones as they are.
        symbol_path = bundle.readable_path(symbol_file.name)
        params_path = bundle.readable_path(params_file.name)
        try:
            symbol = mx.sym.load(symbol_path)
        except mx.base.MXNetError as exc:
            raise BundleError(f"{where}: {symbol_file.name} is not an MXNet symbol file: "
                              f"{_mx_message(exc)}") from None
        unknown = [n for n in names if n not in symbol.list_inputs()]
        if unknown:
            raise BundleError(f"{where}: modelext 'tensors.input' names {unknown}, which "
                              f"{symbol_file.name} does not have; its inputs that are not "
                              f"weights: {_free_inputs(symbol, params_path)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "data: None" type-inference chatter
                block = gluon.SymbolBlock.imports(symbol_path, names, params_path,
                                                  ctx=self._ctx)
        except (mx.base.MXNetError, AssertionError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{where}: {symbol_file.name} with {params_file.name} cannot be "
                              f"loaded: {_mx_message(exc)}") from None
        dtypes = [p.dtype for p in block.collect_params().values()
                  if np.issubdtype(np.dtype(p.dtype), np.floating)]
        self._dtype = np.dtype(dtypes[0]) if dtypes else np.dtype(np.float32)
        self._inputs = names
        self._block = block

    def _check_threads(self) -> None:
        want = cpu_threads(self.settings, "backend.threads")
        if IMPORT_THREADS is not None and want != IMPORT_THREADS:
            log.warning("backend.threads asks for %d CPU threads, but MXNet was imported with "
                        "%d and reads its thread count only then: set AISRV_BACKEND_THREADS in "
                        "the node's environment instead of settings.py", want, IMPORT_THREADS)

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(feeds) != len(self._inputs):
            raise ValueError(f"the model takes {len(self._inputs)} input(s) {self._inputs}; "
                             f"pre-processing gave {len(feeds)}")
        arrays = [mx.nd.array(np.asarray(f), ctx=self._ctx, dtype=self._dtype) for f in feeds]
        try:
            return [o.asnumpy() for o in _flatten(self._block(*arrays))]
        except mx.base.MXNetError as exc:
            # e.g. weights whose shapes do not fit the graph: MXNet sees that only here
            raise RuntimeError(_mx_message(exc)) from None

    def unload(self) -> None:
        self._block = None
        mx.nd.waitall()
        gc.collect()  # Gluon blocks hold reference cycles: free their arrays now
        if self._ctx.device_type == "gpu":
            self._ctx.empty_cache()


def _pick_context(name: str):
    match = _DEVICE.fullmatch(str(name).strip().lower())
    if not match:
        raise ConfigError(f"MXNet device {name!r} is not 'cpu', 'gpu' or 'gpu:N'")
    if match.group(1) == "cpu":
        return mx.cpu()
    index = int(match.group(2) or 0)
    try:
        count = mx.context.num_gpus()
    except mx.base.MXNetError:
        count = 0
    if count <= index:
        log.warning("MXNet device %s asked for, but %s: using cpu", name,
                    "this MXNet sees no GPU" if count == 0 else f"only {count} GPU(s) exist")
        return mx.cpu()
    return mx.gpu(index)


def _params_file(bundle: Bundle, prefix: str, epoch):
    if epoch is not None:
        if isinstance(epoch, bool) or not str(epoch).isdigit():
            raise BundleError(f"bundle {bundle.fullhash}: modelext 'epoch' must be a "
                              f"non-negative number, not {epoch!r}")
        return bundle.file(f"{prefix}-{int(epoch):04d}.params")
    pattern = re.compile(re.escape(prefix) + r"-(\d{4,})\.params")
    found = sorted((int(m.group(1)), p) for p in bundle.path.iterdir()
                   if (m := pattern.fullmatch(p.name)) and p.is_file())
    if not found:
        raise BundleError(f"bundle {bundle.fullhash}: file '{prefix}-0000.params' is missing "
                          f"(no '{prefix}-NNNN.params' weights beside '{prefix}-symbol.json')")
    return found[-1][1]


def _free_inputs(symbol, params_file) -> list[str]:
    """The symbol's inputs that the params file does not hold (its real inputs)."""
    try:
        saved = {k.split(":", 1)[-1] for k in mx.nd.load(str(params_file))}
    except mx.base.MXNetError:
        saved = set()
    return [n for n in symbol.list_inputs() if n not in saved]


def _mx_message(exc: BaseException) -> str:
    # MXNetError text wraps its message in a C++ traceback: keep the message alone.
    text = str(exc).split("Stack trace", 1)[0]
    if "MXNetError:" in text:
        text = text.rsplit("MXNetError:", 1)[1]
    return " ".join(text.split())[:500] or type(exc).__name__


def _flatten(out) -> list:
    if isinstance(out, (list, tuple)):
        return [a for item in out for a in _flatten(item)]
    return [out]

"""TensorFlow backend: `tensorflow.frozen` and `tensorflow.unfrozen` in tf.compat.v1 sessions.

frozen: `model_core` is a frozen GraphDef. unfrozen: a SavedModel loaded with the `serve`
tag; in the old product's layout `model_core` is its `saved_model.pb` with `variables/`
(and `assets/`) beside it in the bundle folder, else a `model_core/` folder holds a whole
SavedModel. The bundle folder is only read (the old product renamed files in it): the
loader is shown the old layout through a private temp directory of symlinks.

Tensors by graph name from modelext `{"tensors": {"input": [...], "output": [...],
"input_type": ["1", "0", ...]}}` ("image" reads "image:0"); an unfrozen model whose
modelext names none uses its `serving_default` signature's, in sorted key order.
input_type "0" inputs are shared by the batch and fed once as given; a batch is one
session call (item by item only where the graph fixes the batch axis at 1).

Device: the backend's own, else `be.tf.device`. `auto`: TensorFlow's placement; `cpu`:
GPUs hidden from the process; `gpu:N`/`cuda:N`: the graph placed on that GPU (ops without
a GPU kernel stay on the CPU), or a warning and the CPU where there is no such GPU. GPU
memory grows as needed. One session per backend, `backend.threads` intra/inter-op threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Sequence

# TensorFlow reads this once, when it is imported; a user's own value wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aiserving.backends.base import Backend, cpu_threads  # noqa: E402
from aiserving.bundle.store import Bundle  # noqa: E402
from aiserving.errors import BundleError, ConfigError  # noqa: E402

log = logging.getLogger(__name__)

_VARIABLE_OPS = {"Variable", "VariableV2", "VarHandleOp"}
# Everything a SavedModel directory may hold beside saved_model.pb.
_SAVED_MODEL_PARTS = ("variables", "assets", "assets.extra", "fingerprint.pb")


def _link(bundle: Bundle, rel: str, dest: str) -> None:
    """Link a SavedModel part into the private export folder: plain parts as they are,
    each file of a sealed bundle as the in-memory file holding its plaintext."""
    source = bundle.path / rel
    if not bundle.sealed_files():
        os.symlink(source.resolve(), dest)
    elif source.is_dir():
        os.makedirs(dest, exist_ok=True)
        for child in sorted(source.iterdir()):
            _link(bundle, f"{rel}/{child.name}", os.path.join(dest, child.name))
    else:
        os.symlink(bundle.readable_path(rel), dest)


class TensorFlowBackend(Backend):
    type_name = "tensorflow"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._device = "cpu"
        self._graph = None
        self._session = None
        self._call = None
        self._inputs: list = []
        self._outputs: list = []
        self._shared: list[bool] = []
        self._one_at_a_time = False
        self._tmp: str | None = None

    @property
    def device(self) -> str:
        return self._device

    # --- loading ----------------------------------------------------------------

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        if self._session is not None:
            self.unload()
        kind = bundle.record.model_type
        if kind not in ("frozen", "unfrozen"):
            raise BundleError(f"bundle {bundle.fullhash}: tensorflow model type {kind!r} is not "
                              "supported (frozen, unfrozen)")
        gpu = self._pick_device(device or self.settings.get("be.tf.device") or "auto")
        threads = cpu_threads(self.settings)
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=threads,
                                          allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        if self._device == "cpu":
            config.device_count["GPU"] = 0
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config)
        # The graph's own device scope: tf.device() made outside it would be an eager one.
        placement = (graph.device(f"/device:GPU:{gpu}") if gpu is not None
                     else contextlib.nullcontext())
        try:
            with graph.as_default(), placement:
                if kind == "frozen":
                    signature = self._import_frozen(bundle)
                else:
                    signature = self._load_saved_model(bundle, session)
            self._bind(bundle, graph, session, signature)
        except BaseException:
            session.close()
            self._remove_tmp()
            raise
        self._graph, self._session = graph, session

    def _pick_device(self, name: str) -> int | None:
        """Set self._device; return the GPU index to place the graph on, if any."""
        match = re.fullmatch(r"(auto|cpu|gpu|cuda)(?::(\d+))?", str(name).strip().lower())
        if not match or (match[1] in ("auto", "cpu") and match[2]):
            raise ConfigError(f"TensorFlow device {name!r} is not one of auto, cpu, gpu, gpu:N "
                              "(cuda, cuda:N)")
        gpus = tf.config.list_physical_devices("GPU")
        if match[1] == "auto":
            self._device = "gpu:0" if gpus and tf.config.get_visible_devices("GPU") else "cpu"
            return None
        if match[1] in ("gpu", "cuda"):
            index = int(match[2] or 0)
            if index < len(gpus) and _visible(gpus):
                self._device = f"gpu:{index}"
                return index
            log.warning("TensorFlow device is %s but %s: using cpu", name,
                        "no GPU is visible" if not gpus else
                        f"only {len(gpus)} GPU(s) exist" if len(gpus) <= index else
                        "an earlier cpu backend hid the GPUs from this process")
        self._device = "cpu"
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass  # GPUs already initialised in this process: device_count hides them
        return None

    def _import_frozen(self, bundle: Bundle) -> None:
        data = bundle.read("model_core")
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(data)
        except Exception as exc:
            raise BundleError(f"bundle {bundle.fullhash}: model_core is not a TensorFlow GraphDef "
                              f"(tensorflow.frozen needs a frozen graph .pb): "
                              f"{type(exc).__name__}: {exc}") from None
        if not graph_def.node:
            raise BundleError(f"bundle {bundle.fullhash}: model_core holds an empty graph "
                              "(tensorflow.frozen needs a frozen graph .pb)")
        variables = sorted(n.name for n in graph_def.node if n.op in _VARIABLE_OPS)
        if variables:
            raise BundleError(f"bundle {bundle.fullhash}: model_core still holds variables "
                              f"({', '.join(variables[:5])}); freeze the graph (tf.compat.v1."
                              "graph_util.convert_variables_to_constants) or ship it as "
                              "tensorflow.unfrozen")
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as exc:
            raise BundleError(f"bundle {bundle.fullhash}: model_core cannot be imported as a "
                              f"graph: {type(exc).__name__}: {exc}") from None

    def _load_saved_model(self, bundle: Bundle, session):
        """Load the SavedModel into `session`; return its MetaGraphDef."""
        core = bundle.path / "model_core"
        sealed = bool(bundle.sealed_files())
        if core.is_dir():
            bundle.refuse_encrypted("a model_core/ folder is not the legacy encrypted format")
            if not (core / "saved_model.pb").is_file():
                raise BundleError(f"bundle {bundle.fullhash}: folder model_core/ holds no "
                                  "saved_model.pb")
            export_dir = str(core)
            if sealed:
                self._tmp = export_dir = tempfile.mkdtemp(prefix="aisrv-tf-")
                for child in sorted(core.iterdir()):
                    _link(bundle, f"model_core/{child.name}", os.path.join(export_dir, child.name))
        elif core.is_file():
            self._tmp = export_dir = tempfile.mkdtemp(prefix="aisrv-tf-")
            # An encrypted or sealed saved_model.pb is opened into an anonymous in-memory file.
            pb = bundle.readable_path("model_core") if bundle.encrypted or sealed \
                else core.resolve()
            os.symlink(pb, os.path.join(export_dir, "saved_model.pb"))
            for name in _SAVED_MODEL_PARTS:
                if (bundle.path / name).exists():
                    _link(bundle, name, os.path.join(export_dir, name))
        else:
            raise BundleError(f"bundle {bundle.fullhash}: file 'model_core' is missing")
        try:
            with _quiet_tf_logger():
                return tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if self._tmp:  # name the bundle's files, not our private links
                detail = detail.replace(os.path.join(self._tmp, "saved_model.pb"), str(core))
                detail = detail.replace(self._tmp, str(bundle.path))
            if isinstance(exc, OSError) and "parse" in str(exc):
                what = "model_core is not a SavedModel's saved_model.pb"
            elif self._tmp and not (bundle.path / "variables").is_dir():
                what = "its folder 'variables/' (beside model_core) is missing"
            else:
                what = "the SavedModel (model_core) cannot be loaded with the 'serve' tag"
            raise BundleError(f"bundle {bundle.fullhash}: {what}: {detail}") from None

    def _bind(self, bundle: Bundle, graph, session, meta) -> None:
        """Resolve modelext's tensors (or the signature's) and make the session callable."""
        fh = bundle.fullhash
        tensors = bundle.record.ext.get("tensors") or {}
        if not isinstance(tensors, dict):
            raise BundleError(f"bundle {fh}: modelext 'tensors' must be an object")
        names = {}
        for role in ("input", "output"):
            names[role] = tensors.get(role)
            if not names[role]:
                names[role] = _signature_names(fh, meta, role)
            if not isinstance(names[role], list) or not all(isinstance(n, str) and n
                                                            for n in names[role]):
                raise BundleError(f"bundle {fh}: modelext tensors.{role} must be a list of "
                                  "tensor names")
        self._inputs = [_tensor(fh, graph, n, "input") for n in names["input"]]
        self._outputs = [_tensor(fh, graph, n, "output") for n in names["output"]]
        kinds = [str(t) for t in tensors.get("input_type") or ["1"] * len(self._inputs)]
        if len(kinds) != len(self._inputs) or not set(kinds) <= {"0", "1"}:
            raise BundleError(f"bundle {fh}: modelext tensors.input_type must hold one \"1\" "
                              f"or \"0\" per input ({len(self._inputs)}); it is {kinds}")
        self._shared = [k == "0" for k in kinds]
        self._one_at_a_time = any(
            not shared and t.shape.rank and t.shape[0] == 1
            for t, shared in zip(self._inputs, self._shared))
        with graph.as_default():
            self._call = session.make_callable(self._outputs, feed_list=self._inputs)
        log.info("bundle %s: TensorFlow %s on %s, inputs %s, outputs %s", fh, tf.__version__,
                 self._device, [t.name for t in self._inputs], [t.name for t in self._outputs])

    # --- serving ----------------------------------------------------------------

    def input_ranks(self) -> list[int | None] | None:
        return [t.shape.rank for t in self._inputs]

    def tensor_specs(self) -> dict | None:
        def spec(t) -> dict:
            numeric = t.dtype.is_numpy_compatible and t.dtype.as_numpy_dtype is not object
            return {"name": t.name, "dtype": np.dtype(t.dtype.as_numpy_dtype).name
                    if numeric else None,
                    "shape": [-1 if d is None else int(d) for d in t.shape.as_list()]
                    if t.shape.rank is not None else None}
        return {"inputs": [spec(t) for t in self._inputs],
                "outputs": [spec(t) for t in self._outputs]}

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(feeds) != len(self._inputs):
            raise ValueError(f"the model takes {len(self._inputs)} inputs "
                             f"({', '.join(t.name for t in self._inputs)}); got {len(feeds)}")
        values = [self._fit(np.asarray(f), t, shared)
                  for f, t, shared in zip(feeds, self._inputs, self._shared)]
        batch = [v for v, shared in zip(values, self._shared) if not shared]
        n = batch[0].shape[0] if batch and batch[0].ndim else 1
        if not self._one_at_a_time or n == 1:
            return [np.asarray(o) for o in self._call(*values)]
        # The graph fixes the batch axis at 1: one call per item.
        rows = [self._call(*[v if shared else v[i:i + 1]
                             for v, shared in zip(values, self._shared)]) for i in range(n)]
        return [np.concatenate([np.asarray(r[k]) for r in rows]) for k in range(len(self._outputs))]

    @staticmethod
    def _fit(value: np.ndarray, tensor, shared: bool) -> np.ndarray:
        """Cast to the input's dtype where that is a same-kind cast; a shared value
        given as a batch of one (shape (1,) for a scalar flag) takes the input's shape."""
        dtype = tensor.dtype
        if dtype.is_numpy_compatible and dtype.as_numpy_dtype is not object:
            target = np.dtype(dtype.as_numpy_dtype)
            if value.dtype != target and np.can_cast(value.dtype, target, "same_kind"):
                value = value.astype(target)
        if shared and tensor.shape.is_fully_defined():
            shape = tuple(tensor.shape.as_list())
            if value.shape != shape and value.size == int(np.prod(shape)):
                value = value.reshape(shape)
        return value

    def unload(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._graph = self._call = None
        self._inputs, self._outputs, self._shared = [], [], []
        tf.compat.v1.reset_default_graph()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _visible(gpus: list) -> bool:
    """Whether the GPUs are visible: a cpu backend hid them, and they can be shown
    again only until TensorFlow has set up its devices."""
    try:
        if list(tf.config.get_visible_devices("GPU")) != list(gpus):
            tf.config.set_visible_devices(gpus, "GPU")
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def _quiet_tf_logger():
    """The v1 loader is what reads graph tensor names; its deprecation notice and
    "Restoring parameters from <private temp dir>" would only mislead in the log."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _signature_names(fullhash: str, meta, role: str) -> list[str]:
    """Tensor names of the `serving_default` signature, in sorted key order."""
    signatures = meta.signature_def if meta is not None else {}
    if "serving_default" not in signatures:
        have = f" (it has signatures {', '.join(sorted(signatures))})" if signatures else ""
        raise BundleError(f"bundle {fullhash}: modelext names no {role} tensors "
                          f"({{\"tensors\": {{\"input\": [...], \"output\": [...]}}}}) and the "
                          f"model has no serving_default signature to take them from{have}")
    entries = getattr(signatures["serving_default"], role + "s")
    return [entries[key].name for key in sorted(entries)]


def _tensor(fullhash: str, graph, name: str, role: str):
    full = name if ":" in name else name + ":0"
    try:
        return graph.get_tensor_by_name(full)
    except (KeyError, ValueError):
        raise BundleError(f"bundle {fullhash}: modelext names {role} tensor {name!r}, which "
                          f"the graph does not have; it has e.g. {_some_names(graph)}") from None


def _some_names(graph, count: int = 8) -> str:
    """A few tensor names a vendor would mean: the placeholders, then the last ops."""
    ops = graph.get_operations()
    feeds = [op for op in ops if op.type in ("Placeholder", "PlaceholderWithDefault")]
    names = [op.outputs[0].name for op in feeds if op.outputs][:count]
    for op in reversed(ops):
        if len(names) >= count:
            break
        if op.outputs and op.outputs[0].name not in names:
            names.append(op.outputs[0].name)
    return ", ".join(names) or "no tensors at all"

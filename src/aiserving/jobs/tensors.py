"""Open Inference Protocol (KServe v2) tensors, shared by its REST and gRPC doors and the worker.

Framework-free (numpy only): datatype mapping, tensors from JSON data, raw
bytes or arrays, the checks of a request against a model's published tensor
metadata, the tensor job as it travels in the model's stream, and the reply
a worker sends back.

Raw layout, as the protocol defines it: the flattened, row-major elements;
a BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from aiserving.errors import InferenceError, InputError

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where a tensor is handled, not with this module: the REST
# front imports it for /v2 and would otherwise carry numpy (~15 MB) while idle.

#: OIP datatype -> numpy dtype name (BYTES: numpy object arrays of bytes)
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
_BY_NUMPY = {dt: name for name, dt in DATATYPES.items() if name != "BYTES"}
IMAGE_OUTPUT = "result"  # the output of the image form, unless the request names it
_LEN = struct.Struct("<I")


def datatype_of(dtype) -> str:
    """The OIP datatype of a numpy dtype (strings and objects are BYTES)."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[dtype.name]
    except KeyError:
        raise InferenceError(f"the model produced a tensor of type {dtype.name}, which the "
                             "Open Inference Protocol cannot carry") from None


def _dtype(datatype: str, name: str) -> np.dtype:
    import numpy as np

    try:
        return np.dtype(DATATYPES[datatype])
    except (KeyError, TypeError):
        raise InputError(f"input {name!r}: datatype {datatype!r} is not supported (one of "
                         f"{', '.join(DATATYPES)})") from None


def _count(shape: Sequence[int], name: str) -> int:
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers, "
                         f"not {shape!r}")
    return math.prod(shape)


@dataclass
class Tensor:
    """One named tensor; `raw` holds its elements in the protocol's raw layout."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes

    def array(self, writable: bool = False) -> np.ndarray:
        """The elements as an array: a read-only view of `raw` unless `writable`
        (frameworks that wrap arrays in place, such as torch, want their own)."""
        import numpy as np

        if self.datatype == "BYTES":
            items = split_bytes(self.raw, self.name)
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(self.shape)
        data = bytearray(self.raw) if writable else self.raw
        return np.frombuffer(data, dtype=DATATYPES[self.datatype]).reshape(self.shape)

    def elements(self) -> list:
        """The flattened elements, as JSON carries them (BYTES as UTF-8 text)."""
        if self.datatype == "BYTES":
            return [b.decode("utf-8", "replace") for b in split_bytes(self.raw, self.name)]
        return self.array().reshape(-1).tolist()

    def describe(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def join_bytes(items) -> bytes:
    return b"".join(_LEN.pack(len(b)) + b for b in items)


def split_bytes(raw: bytes, name: str = "") -> list[bytes]:
    items, at, view = [], 0, memoryview(raw)
    while at < len(raw):
        if at + 4 > len(raw):
            raise InputError(f"input {name!r}: BYTES data ends inside an element's length")
        (size,) = _LEN.unpack_from(raw, at)
        if at + 4 + size > len(raw):
            raise InputError(f"input {name!r}: a BYTES element runs past the end of the data")
        items.append(bytes(view[at + 4:at + 4 + size]))
        at += 4 + size
    return items


def from_raw(name: str, datatype: str, shape, raw: bytes) -> Tensor:
    """A tensor from raw bytes (binary data extension, gRPC raw contents), size-checked."""
    dtype = _dtype(datatype, name)
    count = _count(shape, name)
    raw = bytes(raw)
    if datatype == "BYTES":
        got = len(split_bytes(raw, name))
        if got != count:
            raise InputError(f"input {name!r}: shape {list(shape)} holds {count} element(s); "
                             f"the data has {got}")
    elif len(raw) != count * dtype.itemsize:
        raise InputError(f"input {name!r}: shape {list(shape)} of {datatype} needs "
                         f"{count * dtype.itemsize} bytes of data; {len(raw)} arrived")
    return Tensor(name, datatype, list(shape), raw)


def from_elements(name: str, datatype: str, shape, data) -> Tensor:
    """A tensor from JSON `data` (flat or nested lists) or gRPC typed contents."""
    import numpy as np

    dtype = _dtype(datatype, name)
    count = _count(shape, name)
    flat = _flatten(data, name)
    if len(flat) != count:
        raise InputError(f"input {name!r}: shape {list(shape)} holds {count} element(s); "
                         f"the data has {len(flat)}")
    if datatype == "BYTES":
        items = []
        for item in flat:
            if isinstance(item, str):
                item = item.encode("utf-8", "surrogatepass")
            if not isinstance(item, (bytes, bytearray)):
                raise InputError(f"input {name!r}: BYTES data must be strings")
            items.append(bytes(item))
        return Tensor(name, datatype, list(shape), join_bytes(items))
    if not all(isinstance(v, (int, float)) for v in flat):
        raise InputError(f"input {name!r}: {datatype} data must be numbers"
                         + (" (true/false for BOOL)" if datatype == "BOOL" else ""))
    try:
        with np.errstate(all="ignore"):
            array = np.asarray(flat, dtype=np.float64 if dtype.kind == "f" else None)
            if dtype.kind in "iu" and array.dtype.kind == "f":
                raise ValueError("not integers")
            if dtype.kind in "iu" and len(flat) and (array.min() < np.iinfo(dtype).min
                                                     or array.max() > np.iinfo(dtype).max):
                raise ValueError(f"out of the range of {datatype}")
            array = array.astype(dtype)
    except (ValueError, OverflowError, TypeError) as exc:
        raise InputError(f"input {name!r}: the data does not fit {datatype}: {exc}") from None
    return Tensor(name, datatype, list(shape), array.tobytes())


def _flatten(data, name: str) -> list:
    if not isinstance(data, (list, tuple)):
        raise InputError(f"input {name!r}: data must be a list")
    if not any(isinstance(v, (list, tuple)) for v in data):
        return list(data)
    out, stack = [], [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the stack
        for value in stack[-1]:
            if isinstance(value, (list, tuple)):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def from_array(name: str, array) -> Tensor:
    import numpy as np

    array = np.asarray(array)
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8")
                 for v in array.reshape(-1).tolist()]
        return Tensor(name, datatype, list(array.shape), join_bytes(items))
    return Tensor(name, datatype, list(array.shape),
                  np.ascontiguousarray(array).tobytes())


# --- a request against the model's metadata ------------------------------------------

def is_image_request(tensors: list[Tensor], meta: dict | None) -> bool:
    """The second form: one BYTES input, to a model that takes no BYTES tensor."""
    inputs = (meta or {}).get("inputs") or []
    return (len(tensors) == 1 and tensors[0].datatype == "BYTES"
            and not any(i.get("datatype") == "BYTES" for i in inputs))


def image_of(tensor: Tensor) -> bytes:
    items = split_bytes(tensor.raw, tensor.name)
    if len(items) != 1:
        raise InputError(f"input {tensor.name!r}: the image form takes exactly one BYTES "
                         f"element (one encoded image); {len(items)} arrived")
    if not items[0]:
        raise InputError(f"input {tensor.name!r}: the image is empty")
    return items[0]


def check_inputs(tensors: list[Tensor], meta: dict, model: str) -> list[Tensor]:
    """The request's tensors in the model's input order, or InputError naming the problem."""
    wanted = meta.get("inputs") or []
    names = [t.name for t in tensors]
    listing = ", ".join(f"{i['name']} ({i['datatype']} {i['shape']})" for i in wanted)
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"input {name!r} is given more than once")
    known = {i["name"] for i in wanted}
    for name in names:
        if name not in known:
            raise InputError(f"model {model!r} has no input {name!r}; its inputs are: {listing}")
    given = {t.name: t for t in tensors}
    missing = [i["name"] for i in wanted if i["name"] not in given]
    if missing:
        raise InputError(f"model {model!r} needs input(s) {', '.join(map(repr, missing))}; its "
                         f"inputs are: {listing}")
    ordered = []
    for spec in wanted:
        t = given[spec["name"]]
        if spec.get("datatype") and t.datatype != spec["datatype"]:
            raise InputError(f"input {t.name!r} is {t.datatype}; model {model!r} takes "
                             f"{spec['datatype']}")
        shape = spec.get("shape")
        if shape is not None and (len(shape) != len(t.shape) or any(
                d >= 0 and d != g for d, g in zip(shape, t.shape))):
            raise InputError(f"input {t.name!r} has shape {t.shape}; model {model!r} takes "
                             f"{shape} (-1: any size)")
        ordered.append(t)
    batches = {t.shape[0] for t, spec in zip(ordered, wanted)
               if t.shape and (spec.get("shape") or [0])[0] == -1}
    if len(batches) > 1:
        raise InputError(f"the inputs' batch sizes differ ({sorted(batches)}); they must agree")
    return ordered


def pick_outputs(tensors: list[Tensor], wanted: list[str] | None, model: str) -> list[Tensor]:
    if not wanted:
        return tensors
    by_name = {t.name: t for t in tensors}
    for name in wanted:
        if name not in by_name:
            raise InputError(f"model {model!r} has no output {name!r}; its outputs are: "
                             f"{', '.join(by_name)}")
    return [by_name[n] for n in wanted]


# --- the job in the stream, the worker's reply -----------------------------------------

def pack(tensors: list[Tensor]) -> tuple[bytes, bytes]:
    """(header, data) job fields: what each tensor is, then all their bytes."""
    header = json.dumps([[t.name, t.datatype, t.shape, len(t.raw)] for t in tensors],
                        separators=(",", ":")).encode()
    return header, b"".join(t.raw for t in tensors)


def unpack(header: bytes, data: bytes) -> list[Tensor]:
    try:
        rows = json.loads(header)
        out, at = [], 0
        for name, datatype, shape, size in rows:
            out.append(Tensor(str(name), str(datatype), [int(d) for d in shape],
                              data[at:at + int(size)]))
            at += int(size)
    except (ValueError, TypeError) as exc:
        raise InputError(f"the tensor job is malformed: {exc}") from None
    if at != len(data):
        raise InputError("the tensor job is malformed: its data does not match its header")
    return out


def encode_reply(tensors: list[Tensor]) -> bytes:
    """b"T" + 4-byte header length + header + data (see broker's reply kinds)."""
    header, data = pack(tensors)
    return b"T" + _LEN.pack(len(header)) + header + data


def decode_reply(reply: bytes) -> list[Tensor]:
    (size,) = _LEN.unpack_from(reply, 1)
    return unpack(reply[5:5 + size], reply[5 + size:])


def name_outputs(arrays: list, meta: dict | None) -> list[Tensor]:
    names = [o["name"] for o in (meta or {}).get("outputs") or []]
    return [from_array(names[k] if k < len(names) else f"OUTPUT__{k}", a)
            for k, a in enumerate(arrays)]


# --- model metadata --------------------------------------------------------------------

_PLATFORMS = {"pytorch": "pytorch_libtorch", "onnx": "onnxruntime_onnx",
              "tensorflow.frozen": "tensorflow_graphdef",
              "tensorflow.unfrozen": "tensorflow_savedmodel",
              "tensorflow-lite": "tensorflow_tflite", "mxnet": "mxnet"}


def platform(impl: str) -> str:
    return _PLATFORMS.get(impl) or _PLATFORMS.get(impl.split(".", 1)[0]) or impl


def describe(specs: dict | None, feeds: list | None, outputs: list | None,
             shared: Sequence[bool] = ()) -> dict:
    """The tensor metadata a worker publishes at load.

    `specs`: what the backend knows (`Backend.tensor_specs`); `feeds` and
    `outputs`: the arrays of one trial batch, which fill in what it does not.
    Per-item tensors get -1 on their batch axis: every backend takes any batch.
    """
    specs = specs or {}
    result = {}
    for role, arrays, prefix in (("inputs", feeds, "INPUT__"), ("outputs", outputs, "OUTPUT__")):
        known = specs.get(role)
        count = len(known) if known is not None else len(arrays or [])
        rows = []
        for k in range(count):
            spec = dict(known[k]) if known is not None else {}
            seen = arrays[k] if arrays is not None and k < len(arrays) else None
            name = spec.get("name") or f"{prefix}{k}"
            dtype = spec.get("dtype") or (seen.dtype if seen is not None else None)
            shape = spec.get("shape")
            if shape is None and seen is not None:
                shape = list(seen.shape)
            per_item = not (role == "inputs" and k < len(shared) and shared[k])
            if shape and per_item:
                shape = [-1] + [int(d) for d in shape[1:]]
            rows.append({"name": name, "datatype": datatype_of(dtype) if dtype is not None else "",
                         "shape": [int(d) for d in shape] if shape is not None else None})
        result[role] = rows
    return result


def metadata(name: str, versions: list[str], impl: str, meta: dict | None) -> dict[str, Any]:
    meta = meta or {}
    def rows(role):  # noqa: E306
        return [{"name": t["name"], "datatype": t["datatype"] or "BYTES",
                 "shape": t["shape"] if t["shape"] is not None else [-1]}
                for t in meta.get(role) or []]
    return {"name": name, "versions": versions, "platform": platform(impl),
            "inputs": rows("inputs"), "outputs": rows("outputs")}

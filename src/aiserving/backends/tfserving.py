"""TensorFlow Serving backend: `tensorflow-serving.<any model type>`.

Nothing is loaded here: each batch is ONE predict call to a TensorFlow Serving
server (settings `be.tfsrv.*`), over REST (`POST /v1/models/<name>[/versions/<n>]
:predict`, columnar `inputs`) or gRPC (`PredictionService.Predict`). The model
name is the bundle's distros `name`. modelext may pin `version` (else none is
sent and the server answers with its newest numeric version folder) and choose
`signature_name` (default "predict", what the old product sent; TensorFlow's own
default is "serving_default"). Inputs are named by modelext `tensors.input`;
without names the signature must have one input (REST then sends the bare
batch). Outputs come in modelext `tensors.output` order, else sorted by name.

load() checks the server has the model (model status API) and reads its
signature (model metadata API): an unknown model, version, signature or tensor
name fails the load with a BundleError; a server that cannot be reached fails it
with ModelLoadFailed (the model could not preheat anyway). The signature's
dtypes let gRPC feeds be cast safely (float64 -> float32) and give
input_ranks(). Predict failures raise TFServingError, naming the server, the
model and what happened; the next call reconnects.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import sys
import types
from contextlib import contextmanager
from typing import Any, Sequence
from urllib.parse import quote

import grpc
import numpy as np
from google.protobuf import json_format

from aiserving.backends.base import Backend
from aiserving.bundle.store import Bundle
from aiserving.errors import BundleError, ModelLoadFailed


@contextmanager
def _protos_only():
    """Import `tensorflow.core.*` proto modules without running tensorflow/__init__.py.

    tensorflow_serving.apis imports TensorFlow's generated protos, and importing any
    `tensorflow.` submodule first runs the whole TensorFlow package (measured: 2.7 s
    and ~560 MB per inference process, for a backend that only sends protos; 0.15 s
    and ~35 MB this way). A bare package object stands in for `tensorflow` during the
    import only: vendor code importing tensorflow later gets the real package, which
    shares the proto modules already loaded.
    """
    stand_in = None
    spec = None if "tensorflow" in sys.modules else importlib.util.find_spec("tensorflow")
    if spec is not None and spec.submodule_search_locations:
        stand_in = types.ModuleType("tensorflow")
        stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = stand_in
    try:
        yield
    finally:
        if stand_in is not None and sys.modules.get("tensorflow") is stand_in:
            del sys.modules["tensorflow"]


with _protos_only():
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

_NP_OF = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_HALF: np.float16, types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_UINT16: np.uint16, types_pb2.DT_UINT32: np.uint32,
          types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_}
_DT_OF = {np.dtype(t): dt for dt, t in _NP_OF.items()}
# Where the real server's Predict answer (Tensor::AsProtoField) puts the values.
_FIELD_OF = {dt: "int_val" for dt in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32,
                                      types_pb2.DT_UINT8, types_pb2.DT_UINT16)}
_FIELD_OF.update({types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                  types_pb2.DT_HALF: "half_val", types_pb2.DT_INT64: "int64_val",
                  types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
                  types_pb2.DT_BOOL: "bool_val"})


class TFServingError(RuntimeError):
    """A call to TensorFlow Serving failed; the message names the server, the model and what
    happened. `refused`: the server said the request does not fit its models (HTTP 4xx,
    gRPC NOT_FOUND...): at load time the bundle's fault, not the server's."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class TFServingBackend(Backend):
    type_name = "tensorflow-serving"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self.adapter = str(settings.get("be.tfsrv.adapter", "restful"))
        grpc_adapter = self.adapter == "grpc"
        self.host = str(settings.get("be.tfsrv.host", "127.0.0.1"))
        self.port = int(settings.get("be.tfsrv.grpc_port", 8500) if grpc_adapter
                        else settings.get("be.tfsrv.rest_port", 8501))
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        self.address = f"{host}:{self.port}"
        self.timeout = float(settings.get("be.tfsrv.timeout_s", 10.0))
        self._server: _Rest | _Grpc | None = None
        self._inputs: list[tuple[str, int, int | None]] = []  # (name, dtype, rank), feed order
        self._outputs: list[str] = []
        self._shared: set[int] = set()  # input_type "0": one value for the whole batch

    @property
    def device(self) -> str:
        return f"remote:{self.address}"

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        # `device` is not used: the server decides where its model runs.
        bundle.refuse_encrypted("a TensorFlow Serving bundle has no local model to decrypt")
        ext, where = bundle.record.ext, f"bundle {bundle.fullhash}"
        name, version = bundle.record.name, ext.get("version")
        if not name:
            raise BundleError(f"{where}: distros.json 'name' is empty; it is the model name "
                              f"sent to TensorFlow Serving")
        if version is not None:
            if isinstance(version, bool) or not str(version).isdigit():
                raise BundleError(f"{where}: modelext 'version' must be a whole number, "
                                  f"got {version!r}")
            version = int(version)
        signature = ext.get("signature_name", "predict")
        if not isinstance(signature, str) or not signature:
            raise BundleError(f"{where}: modelext 'signature_name' must be a non-empty string")
        tensors = ext.get("tensors") or {}
        names, outputs = tensors.get("input"), tensors.get("output")
        for key, value in (("input", names), ("output", outputs)):
            if value is not None and not (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)):
                raise BundleError(f"{where}: modelext tensors.{key} must be a list of names")
        self._shared = {k for k, t in enumerate(tensors.get("input_type") or []) if str(t) == "0"}
        self._server = (_Grpc if self.adapter == "grpc" else _Rest)(self, name, version, signature)
        try:
            self._server.check_available()
            signatures = self._server.signatures()
        except TFServingError as exc:
            self._server.close()
            if exc.refused:
                raise BundleError(f"{where}: {exc}") from None
            raise ModelLoadFailed(f"{where} cannot load: {exc}") from None
        self._bind(where, signatures, names, outputs)

    def _bind(self, where: str, signatures: dict, names, outputs) -> None:
        """Check the bundle's signature and tensor names against the served model."""
        s = self._server
        at = f"signature '{s.signature}' of {s.label} at TensorFlow Serving {self.address}"
        signature = signatures.get(s.signature)
        if not isinstance(signature, dict):
            have = sorted(n for n in signatures if not n.startswith("__"))  # not init ops
            raise BundleError(f"{where}: TensorFlow Serving at {self.address} has no signature "
                              f"'{s.signature}' for {s.label} (it has: {', '.join(have) or 'none'})"
                              f"; set modelext signature_name")
        sig_in, sig_out = (_tensor_infos(signature.get(k)) for k in ("inputs", "outputs"))
        if names is None and len(sig_in) != 1:
            raise BundleError(f"{where}: {at} has inputs {', '.join(sorted(sig_in))}: name "
                              f"them in modelext tensors.input")
        s.unnamed = names is None
        names = list(sig_in) if names is None else names
        if sorted(names) != sorted(sig_in):
            raise BundleError(f"{where}: modelext tensors.input {names} does not match the "
                              f"inputs of {at} ({', '.join(sorted(sig_in))})")
        wrong = [n for n in outputs or [] if n not in sig_out]
        if wrong:
            raise BundleError(f"{where}: modelext tensors.output names {', '.join(wrong)}, "
                              f"which {at} lacks (it has: {', '.join(sorted(sig_out))})")
        self._inputs = [(n, *sig_in[n]) for n in names]
        self._outputs = s.output_filter = list(outputs or [])
        s.out_dtypes = {n: info[0] for n, info in sig_out.items()}

    def input_ranks(self) -> list[int | None] | None:
        return [rank for _, _, rank in self._inputs] or None

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        s = self._server
        if len(feeds) != len(self._inputs):
            raise ValueError(f"signature '{s.signature}' of {s.label} takes {len(self._inputs)} "
                             f"input(s) ({', '.join(n for n, _, _ in self._inputs)}) but "
                             f"pre-processing gave {len(feeds)}")
        per_item = [np.shape(f)[0] for k, f in enumerate(feeds)
                    if k not in self._shared and np.ndim(f)]
        got = s.predict([(n, dt, np.asarray(f)) for (n, dt, _), f in zip(self._inputs, feeds)])
        out = []
        for name in self._outputs or sorted(got):
            if name not in got:
                raise s.fail(f"answered without output '{name}' (it sent: "
                             f"{', '.join(sorted(got)) or 'none'})")
            if per_item and (got[name].ndim == 0 or got[name].shape[0] != per_item[0]):
                raise s.fail(f"answered output '{name}' of shape {got[name].shape} for a batch "
                             f"of {per_item[0]}")
            out.append(got[name])
        return out

    def unload(self) -> None:
        if self._server is not None:
            self._server.close()
        self._server = None


class _Server:
    """One served model at one TensorFlow Serving address."""

    def __init__(self, backend: TFServingBackend, name: str, version: int | None,
                 signature: str):
        self.host, self.port, self.address = backend.host, backend.port, backend.address
        self.timeout, self.name, self.version, self.signature = \
            backend.timeout, name, version, signature
        self.label = f"model '{name}'" + (f" version {version}" if version is not None else "")
        self.unnamed = False  # REST: one input, sent as the bare batch
        self.output_filter: list[str] = []
        self.out_dtypes: dict[str, int] = {}

    def fail(self, what: str, refused: bool = False, op: str = "") -> TFServingError:
        return TFServingError(f"TensorFlow Serving at {self.address} {what} ({self.label}"
                              f"{', ' + op if op else ''})", refused)

    def _states_ok(self, answer: dict) -> None:
        states = [s.get("state") for s in answer.get("model_version_status") or []
                  if isinstance(s, dict)]
        if "AVAILABLE" not in states:
            raise self.fail(f"has no AVAILABLE version (states: {states})")

    def _signature_map(self, metadata: dict) -> dict:
        found = (metadata.get("signature_def") or {}).get("signature_def")
        if not isinstance(found, dict):
            raise self.fail("answered model metadata without signatures")
        return found


class _Rest(_Server):
    """REST, over one kept-alive HTTP connection that is reopened after any failure."""

    def __init__(self, *args):
        super().__init__(*args)
        self._path = f"/v1/models/{quote(self.name, safe='')}" + (
            f"/versions/{self.version}" if self.version is not None else "")
        self._conn: http.client.HTTPConnection | None = None

    def check_available(self) -> None:
        self._states_ok(self._call("model status", "GET", self._path))

    def signatures(self) -> dict:
        answer = self._call("model metadata", "GET", self._path + "/metadata")
        return self._signature_map(answer.get("metadata") or {})

    def predict(self, feeds: list) -> dict[str, np.ndarray]:
        inputs = feeds[0][2].tolist() if self.unnamed else {n: f.tolist() for n, _, f in feeds}
        answer = self._call("predict", "POST", self._path + ":predict",
                            {"signature_name": self.signature, "inputs": inputs})
        if "outputs" not in answer:
            raise self.fail(f"answered predict without 'outputs' (keys: {', '.join(answer)})")
        got = answer["outputs"]
        if not isinstance(got, dict):  # the signature's one output: its name is left out
            if len(self.out_dtypes) != 1:
                raise self.fail(f"answered one unnamed output, but signature '{self.signature}' "
                                f"has outputs {', '.join(sorted(self.out_dtypes))}")
            got = {next(iter(self.out_dtypes)): got}
        arrays = {}
        for name, value in got.items():
            try:
                arrays[name] = np.asarray(value, dtype=_NP_OF.get(self.out_dtypes.get(name, -1)))
            except (ValueError, TypeError) as exc:
                raise self.fail(f"answered output '{name}' that is not a regular array of "
                                f"numbers: {exc}") from None
        return arrays

    def _call(self, op: str, method: str, path: str, body: Any = None) -> dict:
        op = f"REST {op}"
        payload = None if body is None else json.dumps(body, default=_json_default).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                # The server closed a kept-alive connection meanwhile; these calls change
                # nothing on the server, so one retry on a fresh connection is safe.
                if not (reused and attempt == 1):
                    raise self.fail(f"closed the connection ({exc})", op=op) from None
            except TimeoutError:
                self.close()
                raise self.fail(f"did not answer within {self.timeout:g} s", op=op) from None
            except OSError as exc:
                self.close()
                raise self.fail(f"cannot be reached: {exc.strerror or exc!r}", op=op) from None
            except http.client.HTTPException as exc:
                self.close()
                raise self.fail(f"gave a broken HTTP answer ({exc!r})", op=op) from None
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if response.status != 200:
            detail = answer.get("error") if isinstance(answer, dict) else None
            raise self.fail(f"answered HTTP {response.status}: "
                            f"{detail or data[:300].decode(errors='replace')}",
                            400 <= response.status < 500, op)
        if not isinstance(answer, dict):
            raise self.fail(f"answered with a body that is not a JSON object: {data[:100]!r}",
                            op=op)
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


class _Grpc(_Server):
    """gRPC, over a channel recreated after any failed call: a new channel connects at
    once instead of waiting out the old one's reconnect back-off."""

    _channel: grpc.Channel | None = None

    def check_available(self) -> None:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, signature=False)
        self._states_ok(_as_dict(self._call("model status", request)))

    def signatures(self) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, signature=False)
        answer, sigmap = self._call("model metadata", request), \
            get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" in answer.metadata:
            answer.metadata["signature_def"].Unpack(sigmap)
        return self._signature_map({"signature_def": _as_dict(sigmap)})

    def predict(self, feeds: list) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest(output_filter=self.output_filter)
        self._spec(request.model_spec)
        for name, dtype, feed in feeds:
            _fill_tensor(request.inputs[name], feed, dtype, name)
        arrays = {}
        for name, proto in self._call("predict", request).outputs.items():
            try:
                arrays[name] = _to_ndarray(proto)
            except (ValueError, KeyError) as exc:
                raise self.fail(f"answered a malformed tensor for output '{name}': "
                                f"{exc}") from None
        return arrays

    def _spec(self, spec, signature: bool = True) -> None:
        spec.name = self.name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = self.signature

    def _call(self, op: str, request):
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=[
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
            prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._methods = {"predict": prediction.Predict,
                             "model metadata": prediction.GetModelMetadata,
                             "model status": model_service_pb2_grpc.ModelServiceStub(
                                 self._channel).GetModelStatus}
        try:
            return self._methods[op](request, timeout=self.timeout)
        except grpc.RpcError as exc:
            self.close()
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                what = f"did not answer within {self.timeout:g} s"
            elif code == grpc.StatusCode.UNAVAILABLE:
                what = f"cannot be reached: {exc.details()}"
            else:
                what = f"answered {code.name}: {exc.details()}"
            raise self.fail(what, code in _REFUSALS, f"gRPC {op}") from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None


_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE)


def _as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _tensor_infos(infos) -> dict[str, tuple[int, int | None]]:
    """Signature TensorInfo JSON -> {alias: (dtype enum, rank or None)}."""
    out = {}
    for alias, info in (infos or {}).items():
        dtype = info.get("dtype")
        shape = info.get("tensor_shape")
        known = isinstance(shape, dict) and not shape.get("unknown_rank")
        out[alias] = (types_pb2.DataType.Value(dtype) if dtype in types_pb2.DataType.keys()
                      else types_pb2.DT_INVALID, len(shape.get("dim") or []) if known else None)
    return out


def _fill_tensor(proto, array: np.ndarray, declared: int, name: str) -> None:
    want = _NP_OF.get(declared)
    if want is not None and array.dtype != want and np.can_cast(array.dtype, want, "same_kind"):
        array = array.astype(want)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=s) for s in array.shape)
    if array.dtype.kind in "SUO":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v)
                                for v in array.ravel().tolist())
        return
    if array.dtype not in _DT_OF:
        raise ValueError(f"input '{name}' has dtype {array.dtype}, which TensorFlow Serving "
                         f"cannot take")
    proto.dtype = _DT_OF[array.dtype]
    proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def _to_ndarray(proto) -> np.ndarray:
    """TensorProto -> array, from tensor_content or the typed *_val fields (as tf.make_ndarray)."""
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        values = np.array(list(proto.string_val), dtype=object)
    else:
        if proto.dtype not in _NP_OF:
            raise ValueError(f"dtype {types_pb2.DataType.Name(proto.dtype)} is not supported")
        dtype = np.dtype(_NP_OF[proto.dtype])
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")) \
                .astype(dtype).reshape(shape)
        values = getattr(proto, _FIELD_OF[proto.dtype])
        if proto.dtype == types_pb2.DT_HALF:  # half_val holds the 16 bits of each value
            values = np.array(values, dtype=np.uint16).view(np.float16)
        values = np.array(values, dtype=dtype)
    size = int(np.prod(shape))
    if 0 < values.size < size:  # a value list shorter than the shape repeats its last value
        values = np.concatenate([values, np.repeat(values[-1:], size - values.size)])
    return values.reshape(shape)


def _json_default(value):
    if isinstance(value, bytes):  # binary strings travel as {"b64": ...} (REST API)
        return {"b64": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")

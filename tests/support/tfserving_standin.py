"""A stand-in for TensorFlow Serving, which cannot run here, speaking its documented protocol.

It serves one model from a model base path (`<base>/<version>/` SavedModels, as
`tensorflow_model_server --model_base_path`), computing with TensorFlow itself
(`tf.saved_model.load`), in threads of the test process, on free loopback ports:

- REST (tensorflow/serving g3doc/api_rest.md): `GET /v1/models/<name>[/versions/<v>]`
  (model status), `.../metadata` (signature defs, read from saved_model.pb as the
  server does), `POST .../[versions/<v>]:predict` in row (`instances` ->
  `predictions`) and columnar (`inputs` -> `outputs`) form, one output's name left
  out; errors as `{"error": "..."}` with a 4xx/5xx status. Keep-alive (HTTP/1.1).
- gRPC, with tensorflow-serving-api's own servicer base classes:
  `PredictionService.Predict` / `GetModelMetadata` and `ModelService.GetModelStatus`.
  Answers carry values in the typed fields (`float_val`...) as the real server's
  Predict does (Tensor::AsProtoField); `tensor_form = "content"` uses tensor_content.

Version policy `latest` (TF Serving's default) serves only the newest numeric
version folder; `all` serves every one (for version pinning). Faults (`fault`):
"slow" (answers predict after `delay_s`), "error_status" (INTERNAL / HTTP 500),
"wrong_shape" (drops one row of each output), "missing_output" (drops `embedding`),
REST only: "bad_json" (a truncated body), "wrong_keys" (`{"result": ...}`),
"ragged" (an output that is no regular array). `stop()` is a server gone down
(listeners and open connections closed); `start()` brings it back on the same ports.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

_HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
            grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INTERNAL: 500}
_URL = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                  r"(?P<verb>/metadata|:predict)?")
_FIELD = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val",
          np.int64: "int64_val"}


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class TFServingStandIn:
    def __init__(self, base: Path, name: str, *, policy: str = "latest"):
        self.base, self.name, self.policy = Path(base), name, policy
        self.versions = sorted(int(p.name) for p in self.base.iterdir()
                               if p.is_dir() and p.name.isdigit())
        self.models = {v: tf.saved_model.load(str(self.base / str(v))) for v in self.versions}
        self.sigdefs = {}
        for v in self.versions:
            saved = saved_model_pb2.SavedModel()
            saved.ParseFromString((self.base / str(v) / "saved_model.pb").read_bytes())
            self.sigdefs[v] = saved.meta_graphs[0].signature_def
        self.fault: str | None = None
        self.delay_s = 0.0
        self.tensor_form = "field"
        self.calls: list[tuple] = []  # (adapter, version, signature, {input: shape})
        self.last_request = None  # the last REST predict body, parsed
        self.rest_port = self.grpc_port = 0
        self._http: _HTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self._wake = threading.Event()

    # --- up and down ----------------------------------------------------------------

    def start(self) -> "TFServingStandIn":
        self._wake.clear()
        self._http = _HTTPServer(("127.0.0.1", self.rest_port), self)
        self.rest_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._grpc = grpc.server(ThreadPoolExecutor(8), options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _Prediction(self), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Models(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._wake.set()  # slow answers stop waiting
        if self._grpc is not None:
            self._grpc.stop(None).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            for conn in list(self._http.live):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._grpc = self._http = None

    # --- the model server -------------------------------------------------------------

    @property
    def served(self) -> list[int]:
        return self.versions if self.policy == "all" else self.versions[-1:]

    def version(self, name: str, version: int | None) -> int:
        if name != self.name or (version is not None and version not in self.served):
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        return self.served[-1] if version is None else version

    def status(self, name: str, version: int | None) -> list[int]:
        if name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        if version is not None and version not in self.served:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find version {version} of model {name}")
        return [version] if version is not None else self.served

    def signature(self, version: int, name: str):
        name = name or "serving_default"
        if name not in self.sigdefs[version]:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        return name, self.sigdefs[version][name]

    def run(self, adapter: str, version: int, signature: str, inputs: dict) -> dict:
        """One predict on the real model, checked as TF Serving's predict_util does."""
        signature, sigdef = self.signature(version, signature)
        if set(inputs) != set(sigdef.inputs):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
                f"input size does not match signature: {len(inputs)}!={len(sigdef.inputs)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(sigdef.inputs))}}})"
                f". Sent extra: {{{','.join(sorted(set(inputs) - set(sigdef.inputs)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(sigdef.inputs) - set(inputs)))}}}."))
        self.calls.append((adapter, version, signature, {k: v.shape for k, v in inputs.items()}))
        if self.fault == "error_status":
            raise ServingError(grpc.StatusCode.INTERNAL, "the stand-in was told to fail")
        if self.fault == "slow":
            self._wake.wait(self.delay_s)
        try:
            out = self.models[version].signatures[signature](
                **{k: tf.constant(v) for k, v in inputs.items()})
        except Exception as exc:  # what the session reports: a bad shape, a bad dtype
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        out = {k: v.numpy() for k, v in out.items()}
        if self.fault == "wrong_shape":
            out = {k: v[:-1] for k, v in out.items()}
        if self.fault == "missing_output":
            out.pop("embedding", None)
        return out

    def metadata(self, name: str, version: int | None):
        version = self.version(name, version)
        return version, get_model_metadata_pb2.SignatureDefMap(
            signature_def=dict(self.sigdefs[version]))

    def numpy_dtype(self, version: int, signature: str, alias: str):
        return tf.as_dtype(self.signature(version, signature)[1].inputs[alias].dtype).as_numpy_dtype


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, standin: TFServingStandIn):
        self.standin = standin
        self.live: set = set()  # open connections: closed when the server goes down
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        self.live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.live.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = _URL.fullmatch(self.path.split("?")[0])
        s: TFServingStandIn = self.server.standin
        try:
            if match is None or (method, match["verb"]) not in (
                    ("GET", None), ("GET", "/metadata"), ("POST", ":predict")):
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {method} {self.path}")
            name = unquote(match["name"])
            version = int(match["version"]) if match["version"] else None
            if match["verb"] is None:
                self._send(200, {"model_version_status": [
                    {"version": str(v), "state": "AVAILABLE",
                     "status": {"error_code": "OK", "error_message": ""}}
                    for v in s.status(name, version)]})
            elif match["verb"] == "/metadata":
                version, sigmap = s.metadata(name, version)
                self._send(200, {"model_spec": {"name": name, "signature_name": "",
                                                "version": str(version)},
                                 "metadata": {"signature_def": json_format.MessageToDict(
                                     sigmap, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)}})
            else:
                self._predict(s, name, version, body)
        except ServingError as exc:
            self._send(_HTTP_OF.get(exc.code, 500), {"error": exc.message})

    def _predict(self, s: TFServingStandIn, name: str, version: int | None, body: bytes):
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {exc}")
        s.last_request = doc
        if not isinstance(doc, dict) or ("inputs" in doc) == ("instances" in doc):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Missing 'inputs' or 'instances' key (exactly one is required)")
        version = s.version(name, version)
        signature, sigdef = s.signature(version, doc.get("signature_name", ""))
        aliases = list(sigdef.inputs)
        columnar = "inputs" in doc
        raw = doc["inputs"] if columnar else doc["instances"]
        if columnar and isinstance(raw, dict):
            named = raw
        elif len(aliases) == 1 and not (not columnar and raw and isinstance(raw[0], dict)):
            named = {aliases[0]: raw}
        elif not columnar and isinstance(raw, list) and all(isinstance(r, dict) for r in raw):
            try:
                named = {k: [row[k] for row in raw] for k in aliases}
            except KeyError as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"instance lacks named input {exc}") from None
        else:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "inputs are not named but the signature has several")
        inputs = {}
        for alias, value in named.items():
            try:  # JSON numbers become the signature's dtype, as TF Serving's json_tensor
                dtype = s.numpy_dtype(version, signature, alias) if alias in sigdef.inputs else None
                inputs[alias] = np.asarray(value, dtype=dtype)
            except (ValueError, TypeError) as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{alias}' is not a regular tensor: {exc}") from None
        out = s.run("restful", version, signature, inputs)
        if s.fault == "bad_json":
            return self._send(200, b'{"outputs": {"scores": [[0.1, 0.2')
        if s.fault == "wrong_keys":
            return self._send(200, {"result": {k: v.tolist() for k, v in out.items()}})
        if s.fault == "ragged":
            out = {k: [[1.0, 2.0], [3.0]] for k in out}
        out = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()}
        single = len(sigdef.outputs) == 1  # "only one named tensor": its name is left out
        if columnar:
            self._send(200, {"outputs": next(iter(out.values())) if single else out})
        else:
            rows = len(next(iter(out.values())))
            self._send(200, {"predictions": next(iter(out.values())) if single else
                             [{k: v[i] for k, v in out.items()} for i in range(rows)]})

    def _send(self, status: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a "slow" answer after its time-out)


def _as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """What the real server's Predict answers (Tensor::AsProtoField): values in *_val."""
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum,
                                   tensor_shape=tf.TensorShape(array.shape).as_proto())
    getattr(proto, _FIELD[array.dtype.type]).extend(array.ravel().tolist())
    return proto


class _Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, standin: TFServingStandIn):
        self.s = standin

    def Predict(self, request, context):
        s, spec = self.s, request.model_spec
        try:
            version = s.version(spec.name, spec.version.value if spec.HasField("version") else None)
            signature, sigdef = s.signature(version, spec.signature_name)
            inputs = {}
            for n, (alias, proto) in enumerate(sorted(request.inputs.items())):
                want = sigdef.inputs[alias].dtype if alias in sigdef.inputs else proto.dtype
                if proto.dtype != want:  # gRPC tensors are not converted: the session refuses
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
                        f"Expects arg[{n}] to be {tf.as_dtype(want).name} but "
                        f"{tf.as_dtype(proto.dtype).name} is provided"))
                inputs[alias] = tf.make_ndarray(proto)
            out = s.run("grpc", version, signature, inputs)
            wanted = list(request.output_filter) or list(out)
            unknown = [a for a in wanted if a not in sigdef.outputs]
            if unknown:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {unknown[0]}")
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        answer = predict_pb2.PredictResponse()
        answer.model_spec.name, answer.model_spec.signature_name = spec.name, signature
        answer.model_spec.version.value = version
        for alias in wanted:
            if alias in out:
                answer.outputs[alias].CopyFrom(_as_proto_field(out[alias])
                                               if s.tensor_form == "field"
                                               else tf.make_tensor_proto(out[alias]))
        return answer

    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Metadata field {list(request.metadata_field)} is not supported")
        spec = request.model_spec
        try:
            version, sigmap = self.s.metadata(
                spec.name, spec.version.value if spec.HasField("version") else None)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        answer = get_model_metadata_pb2.GetModelMetadataResponse()
        answer.model_spec.name = spec.name
        answer.model_spec.version.value = version
        answer.metadata["signature_def"].Pack(sigmap)
        return answer


class _Models(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, standin: TFServingStandIn):
        self.s = standin

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        try:
            versions = self.s.status(spec.name,
                                     spec.version.value if spec.HasField("version") else None)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        answer = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            answer.model_version_status.add(
                version=v, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return answer

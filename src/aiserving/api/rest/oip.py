"""Open Inference Protocol (KServe v2) over REST, under `/v2` on the REST front.

Errors answer `{"error": "<message>"}` with the error's HTTP status, as the
protocol asks (status and headers from `common.error_response`). The
binary tensor data extension is spoken both ways: a request whose
`Inference-Header-Content-Length` header gives the length of its JSON part
carries the inputs with a `binary_data_size` parameter after it, in order;
outputs asked for with `binary_data` (or all, with the request parameter
`binary_data_output`, which tritonclient sends when it names no outputs) come
back the same way.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, request

import aiserving
from aiserving.api.oip_door import EXTENSIONS, OipDoor
from aiserving.api.rest.common import body_bytes, error_response, json_object
from aiserving.api.rest.common import json_response as _json
from aiserving.errors import BadRequest
from aiserving.jobs import tensors as oip

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"


def blueprint(settings, broker, waiting=None) -> Blueprint:
    door = OipDoor(broker, settings, "oip-rest", waiting)
    bp = Blueprint("oip", __name__, url_prefix="/v2")
    build = aiserving.build_info()

    bp.register_error_handler(Exception, lambda exc: error_response(exc, _error))

    @bp.get("")
    def server_metadata():
        return _json({"name": "aiserving", "version": build["version"], "extensions": EXTENSIONS})

    @bp.get("/health/live")
    def server_live():
        return _json({"live": True})

    @bp.get("/health/ready")
    def server_ready():
        ready = door.server_ready()
        return _json({"ready": ready}, 200 if ready else 503)

    @bp.get("/models/<name>")
    @bp.get("/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str = ""):
        return _json(door.metadata(name, version))

    @bp.get("/models/<name>/ready")
    @bp.get("/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str = ""):
        ready = door.model_ready(name, version)
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    @bp.post("/models/<name>/infer")
    @bp.post("/models/<name>/versions/<version>/infer")
    def model_infer(name: str, version: str = ""):
        body, binary = _read_request()
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest("field 'id' must be a string")
        inputs = _inputs(body.get("inputs"), binary)
        wanted, as_binary = _outputs(body)
        answered, outputs = door.infer(name, version, inputs, [w for w, _ in wanted] or None)
        binary_names = {w for w, b in wanted if b} if wanted else (
            {t.name for t in outputs} if as_binary else set())
        return _response(name, answered, request_id, outputs, binary_names)

    @bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def unknown(rest: str):
        return _error(f"no Open Inference Protocol endpoint /v2/{rest} (on this node: "
                      "/v2, /v2/health/live|ready, /v2/models/<name>[/versions/<v>]"
                      "[/ready|/infer])", 404)

    return bp


def _read_request() -> tuple[dict, bytes]:
    data = body_bytes()
    header_length = request.headers.get(HEADER_LENGTH)
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(data):
            raise BadRequest(f"header {HEADER_LENGTH} must be the length of the JSON part "
                             f"({len(data)} bytes arrived in all)")
        data, binary = data[:int(header_length)], data[int(header_length):]
    return json_object(data), binary


def _inputs(raw_inputs, binary: bytes) -> list[oip.Tensor]:
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("field 'inputs' must be a non-empty list of tensors")
    tensors, at = [], 0
    for spec in raw_inputs:
        if not isinstance(spec, dict):
            raise BadRequest("each input must be an object with name, datatype, shape, data")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a 'name'")
        if not isinstance(datatype, str):
            raise BadRequest(f"input {name!r} needs a 'datatype'")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                    or at + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit the "
                                 f"{len(binary) - at} binary bytes left in the request")
            tensors.append(oip.from_raw(name, datatype, shape, binary[at:at + size]))
            at += size
        elif "data" in spec:
            tensors.append(oip.from_elements(name, datatype, shape, spec["data"]))
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor binary data")
    if at != len(binary):
        raise BadRequest(f"{len(binary) - at} binary bytes after the inputs belong to none")
    return tensors


def _outputs(body: dict) -> tuple[list[tuple[str, bool]], bool]:
    """The outputs asked for (name, binary?) and the request's `binary_data_output`."""
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("field 'parameters' must be an object")
    as_binary = params.get("binary_data_output") is True
    raw = body.get("outputs")
    if raw is None:
        return [], as_binary
    if not isinstance(raw, list):
        raise BadRequest("field 'outputs' must be a list")
    wanted = []
    for spec in raw:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest("each requested output must be an object with a 'name'")
        out_params = spec.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise BadRequest(f"output {spec['name']!r}: 'parameters' must be an object")
        wanted.append((spec["name"], out_params.get("binary_data", as_binary) is True))
    return wanted, as_binary


def _response(model: str, version: str, request_id, outputs: list[oip.Tensor],
              binary_names: set[str]) -> Response:
    described, chunks = [], []
    for t in outputs:
        entry = t.describe()
        if t.name in binary_names:
            entry["parameters"] = {"binary_data_size": len(t.raw)}
            chunks.append(t.raw)
        else:
            entry["data"] = t.elements()
        described.append(entry)
    answer = {"model_name": model, "model_version": version, "outputs": described}
    if request_id:
        answer["id"] = request_id
    header = json.dumps(answer).encode()
    if not chunks:
        return Response(header, 200, mimetype="application/json")
    response = Response(header + b"".join(chunks), 200, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)

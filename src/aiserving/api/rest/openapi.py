"""The OpenAPI 3 description of the REST front, served at `/openapi.json`.

Kept as data in the package (compiled into the release-pack like everything
else); `tests/api/test_openapi.py` keeps it in step with the app's routes.
"""

from __future__ import annotations

import aiserving

_FAILED = {"$ref": "#/components/schemas/Failed"}


def _answers(ok: dict, *codes: int) -> dict:
    out = {"200": {"description": "success", "content": {"application/json": {"schema": ok}}}}
    words = {400: "malformed request or unusable input", 401: "token missing or wrong",
             403: "management call from outside auth.admin_addresses",
             404: "unknown model or backend", 409: "too many backends", 413: "body too large",
             422: "bundle malformed, or its processing failed on this input",
             429: "too many failed authentications from this address (Retry-After)",
             500: "inference failed", 503: "not ready, queue full or redis unavailable "
             "(Retry-After)", 504: "no result within request.timeout_s"}
    if 401 in codes:  # where tokens are asked, a peer guessing them is stopped
        codes = tuple(sorted({*codes, 429}))
    for code in codes:
        out[str(code)] = {"description": words[code],
                          "content": {"application/json": {"schema": _FAILED}}}
    return out


def _nodes_schema() -> dict:
    string, number, integer = {"type": "string"}, {"type": "number"}, {"type": "integer"}
    model = {"type": "object", "properties": {
        "bid": string, "fullhash": string, "name": string, "version": string, "impl": string,
        "status": {"type": "string", "description": "as GET /switch's status"},
        "serving": {"type": "string", "description": "fullhash taking traffic, or empty"}}}
    queue = {"type": "object", "properties": {
        "fullhash": string,
        "depth": {"type": "integer", "description": "jobs waiting or in flight, on any node"},
        "in_flight": {"type": "integer", "description": "jobs this node's processes hold"}}}
    node = {"type": "object", "required": ["name"], "properties": {
        "name": string, "version": string,
        "addresses": {"type": "object", "properties": {
            "rest": string, "grpc": string, "oip_grpc": string}},
        "backend_types": {"type": "array", "items": string, "nullable": True,
                          "description": "null until the node has probed its frameworks"},
        "models": {"type": "array", "items": model},
        "resources": {"type": "object", "description": "percentages, as gRPC "
                      "ListNodeResources", "properties": {
                          "cpu": string, "mem": string, "gpu": string, "dsk": string}},
        "load": {"type": "object", "properties": {
            "queues": {"type": "array", "items": queue}, "in_flight": integer}},
        "started_at": {"type": "number", "description": "Unix time"},
        "last_seen": {"type": "number", "description": "Unix time of its last heartbeat"},
        "ttl_s": number}}
    return {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["success"]},
        "nodes": {"type": "array", "items": node}}}


def document() -> dict:
    backend_id = {"type": "string", "description": "backend id (\"0\", \"1\", ...)",
                  "example": "0"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "AIServing OnBoard", "version": aiserving.__version__,
                 "description": "Legacy REST API of the edge inference node."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Failed": {"type": "object", "required": ["status", "message"], "properties": {
                    "status": {"type": "string", "enum": ["failed"]},
                    "message": {"type": "string"}}},
                "DetectRequest": {"type": "object", "required": ["path"], "properties": {
                    "path": {"type": "string", "description": "absolute path of the input "
                             "file, under input.roots", "example": "/tmp/frame.jpg"},
                    "bid": backend_id}},
                "DetectAnswer": {"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["success"]},
                    "result": {"description": "the bundle's post-processing output"},
                    "message": {"type": "string"}, "uuid": {"type": "string"}}},
                "SwitchRequest": {"type": "object", "properties": {
                    "bid": backend_id, "btype": {"type": "string", "example": "pytorch"},
                    "model": {"type": "string", "description": "the bundle's name"},
                    "mode": {"type": "string", "example": "structureSplit"},
                    "device": {"type": "string"},
                    "encrypted": {"type": "string", "description": "\"1\" for an encrypted "
                                  "model_core (with a64key and pvtkey)"},
                    "a64key": {"type": "string"}, "pvtkey": {"type": "string"}}},
                "SwitchAnswer": {"type": "object", "properties": {
                    "status": {"type": "string"}, "bid": backend_id}},
                "SwitchState": {"type": "object", "properties": {
                    "model": {"type": "string"}, "bid": backend_id,
                    "status": {"type": "string", "enum": ["cleaning", "loading", "preheating",
                                                          "loaded", "failed"]},
                    "error": {"type": "string"},
                    "sizing": {"type": "object", "nullable": True, "description": "How the backend's "
                               "processes were sized: processes, CPU threads each, batch "
                               "size and the batch cap the preheat measured.",
                               "properties": {
                                   "processes": {"type": "integer"},
                                   "threads": {"type": "integer"},
                                   "batchsize": {"type": "integer"},
                                   "batch_cap": {"type": "integer", "nullable": True}}}}},
                "Health": {"type": "object", "properties": {
                    "status": {"type": "string"}, "version": {"type": "string"},
                    "compiled": {"type": "boolean"}}},
                "Ready": {"type": "object", "properties": {
                    "status": {"type": "string"},
                    "backends": {"type": "array", "items": backend_id},
                    "redis_persists": {"type": "boolean", "description": "whether redis keeps "
                                       "an append-only file (queued jobs and results outlive "
                                       "its restart)"}}},
                "Nodes": _nodes_schema(),
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1alpha/detect": {"post": {
                "summary": "Run one input through a loaded model; blocks until the result.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DetectRequest"}}}},
                "responses": _answers({"$ref": "#/components/schemas/DetectAnswer"},
                                      400, 401, 404, 413, 422, 500, 503, 504)}},
            "/api/v1alpha/switch": {
                "post": {"summary": "Load a model (on a new backend without bid); returns at "
                                    "once.",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/SwitchRequest"}}}},
                         "responses": _answers({"$ref": "#/components/schemas/SwitchAnswer"},
                                               400, 401, 403, 404, 409, 413, 422, 503)},
                "get": {"summary": "Loading state of a backend (the last /switch's without bid).",
                        "parameters": [{"name": "bid", "in": "query", "required": False,
                                        "schema": backend_id}],
                        "responses": _answers({"$ref": "#/components/schemas/SwitchState"},
                                              401, 404, 503)}},
            "/api/v1alpha/nodes": {"get": {
                "summary": "The nodes sharing this node's redis (the fleet registry): live "
                           "ones only, sorted by name.",
                "responses": _answers({"$ref": "#/components/schemas/Nodes"}, 401, 503)}},
            "/healthz": {"get": {"summary": "200 while the front and redis answer.",
                                 "security": [{}],
                                 "responses": _answers({"$ref": "#/components/schemas/Health"},
                                                       503)}},
            "/readyz": {"get": {"summary": "200 when the node daemon takes commands and a model "
                                           "is loaded and running.",
                                "responses": _answers({"$ref": "#/components/schemas/Ready"},
                                                      401, 503)}},
            "/metrics": {"get": {"summary": "Prometheus metrics of all the node's processes "
                                            "(text exposition format).",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {
                                                           "schema": {"type": "string"}}}},
                                               "401": {"description": "token missing"},
                                               "429": {"description": "too many failures"}}}},
            "/openapi.json": {"get": {"summary": "This document.",
                                      "responses": {"200": {"description": "OpenAPI 3",
                                                            "content": {"application/json": {
                                                                "schema": {"type": "object"}}}},
                                                    "401": {"description": "token missing"},
                                                    "429": {"description": "too many failures"}}}},
        },
    }

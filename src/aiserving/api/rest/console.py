"""The device console: a page served by the REST front at `/console`, and its JSON calls.

The page (plain HTML, JS and CSS from `console_static/`, shipped as data in the
package and in the release-pack) is open, like any static file: it holds no
data. Everything it shows or does goes through calls that carry the token the
user types into the page, checked by the front's guard like the rest of the
API: `GET /console/api/state` (version, resources, backends, queues, stored
models), `POST /console/api/detect` (an image given inline, as the page has no
path on the node's disk) and `POST /console/api/unload` (a management call, as
`POST /switch` is). Latency comes from `/metrics`, which the page reads itself.

These calls are the page's own, not part of the legacy API: `/openapi.json`
leaves the console out.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from pathlib import Path

from flask import Blueprint, Response

from aiserving import metrics
import aiserving
from aiserving.api.auth import Guard
from aiserving.api.rest.common import json_body, opt_str
from aiserving.api.rest.common import json_response as _json
from aiserving.broker import broker as brk
from aiserving.bundle.store import BundleStore
from aiserving.errors import (AiservingError, BadRequest, BundleError, ModelNotFound,
                              RequestTimeout)
from aiserving.api.intake import ask
from aiserving.jobs.inputs import decode_inline
from aiserving.node.resources import node_resources
from aiserving.status import BackendState, ProcStatus

PAGE = "/console"
API = "/console/api"
#: console calls that change what the node runs: they need the admin token, like POST /switch
ADMIN_PATHS = frozenset({f"{API}/unload"})

# Served by name only: nothing else in the folder (or outside it) can be asked for.
_FILES = {"index.html": "text/html", "console.js": "text/javascript",
          "console.css": "text/css"}
# The page loads only its own files and talks only to this node; the canvas draws a
# blob: URL of the picked image.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_page(path: str) -> bool:
    """Whether `path` is one of the page's static files (open: they hold no data)."""
    return path in (PAGE, PAGE + "/") or (path.startswith(PAGE + "/")
                                          and not path.startswith(API + "/"))


def static_folder() -> Path:
    # The package folder, not this module's __file__: compiled modules have none to rely on.
    return Path(aiserving.__path__[0]) / "api" / "rest" / "console_static"


def auth_mode(guard: Guard) -> str:
    """What the page must ask for: "token" (every call), "admin" (load/unload only), "none"."""
    if guard.token:
        return "token"
    return "admin" if guard.admin else "none"


def blueprint(settings, broker: brk.Broker, waiting, guard: Guard) -> Blueprint:
    """The console's routes; `waiting` is the front's per-model WaitingLimit."""
    bp = Blueprint("console", __name__)
    folder = static_folder()
    store = BundleStore(settings.storage)
    timeout = float(settings["request.timeout_s"])
    max_input = settings["request.max_image_bytes"]
    build = aiserving.build_info()
    # The page learns up front whether to ask for a token, so a node with auth on never
    # sees (and the browser never logs) a burst of refused calls before one is typed.
    index = (folder / "index.html").read_text(encoding="utf-8").replace(
        "{{AUTH_MODE}}", auth_mode(guard))

    @bp.get(PAGE)
    @bp.get(PAGE + "/")
    def page():
        return _static(index, _FILES["index.html"])

    @bp.get(PAGE + "/<name>")
    def page_file(name: str):
        if name not in _FILES or name == "index.html":
            return _json({"status": "failed", "message": f"no console file {name!r}"}, 404)
        return _static((folder / name).read_bytes(), _FILES[name])

    @bp.get(f"{API}/state")
    def state():
        backends = sorted((_backend_view(b) for b in broker.backends()),
                          key=lambda b: (len(b["bid"]), b["bid"]))
        rest_bid = broker.db.get(broker.keys.rest_bid)
        return _json({
            "status": "success", "version": build["version"], "compiled": build["compiled"],
            "node": settings["node.name"], "alive": broker.node_alive(),
            "resources": node_resources(settings.storage),
            "rest_bid": rest_bid.decode() if rest_bid else "",
            "backends": backends, "queues": broker.queue_depths(),
            "models": _stored_models(store)})

    @bp.post(f"{API}/unload")
    def unload():
        bid = opt_str(json_body(), "bid")
        if not bid:
            raise BadRequest("field 'bid' (the backend to unload) is required")
        broker.command("terminate", {"bid": bid}, uuidlib.uuid4().hex)
        return _json({"status": "success", "bid": bid})

    @bp.post(f"{API}/detect")
    def detect():
        t0, seen = time.perf_counter(), {"model": ""}
        metrics.in_flight().inc()
        try:
            response = _detect(json_body(), seen)
        except AiservingError as exc:
            metrics.requests().labels("console", seen["model"], str(exc.code)).inc()
            raise
        finally:
            metrics.in_flight().dec()
            metrics.request_seconds().labels("console", seen["model"]).observe(
                time.perf_counter() - t0)
        metrics.requests().labels("console", seen["model"], "ok").inc()
        return response

    def _detect(body: dict, seen: dict) -> Response:
        kind = opt_str(body, "type")
        text = body.get("base64")
        if not isinstance(text, str):
            raise BadRequest("field 'base64' (the image, base64-encoded) is required")
        bid = opt_str(body, "bid")

        def plan(fresh: bool):
            backend = broker.route(bid or None, fresh=fresh)
            seen["model"] = backend.get("serving") or ""
            image = decode_inline(text, kind, backend, max_input)
            return backend, backend["version"], {"image": image, "kind": kind}

        backend, uuid, reply = ask(broker, plan, timeout, waiting)
        if reply is None:
            raise RequestTimeout(f"no result within {timeout:.0f} s")
        # The result is already JSON text: spliced in, as /detect does.
        answer = (b'{"status":"success","result":' + reply[1:] + b',"uuid":"' + uuid.encode()
                  + b'","bid":' + json.dumps(backend["bid"]).encode() + b'}')
        return Response(answer, 200, mimetype="application/json")

    return bp


def _backend_view(record: dict) -> dict:
    """A published backend record without the model's labels (a model may have thousands)."""
    model = record.get("model") or {}
    status = record.get("status") or {}
    procs = [{"n": int(k), "status": v, "name": _name(ProcStatus, v)}
             for k, v in sorted(status.items(), key=lambda kv: kv[0]) if k.isdigit()]
    return {
        "bid": str(record["bid"]), "impl": record.get("impl", ""),
        "state": record.get("state"), "state_name": _name(BackendState, record.get("state")),
        "msg": record.get("msg", ""), "serving": record.get("serving"),
        "switch": record.get("switch") or {}, "sizing": record.get("sizing"),
        "processes": sorted(procs, key=lambda p: p["n"]),
        "model": {k: model.get(k, "") for k in ("name", "implhash", "version", "impl")}
        if model else None,
    }


def _stored_models(store: BundleStore) -> list[dict]:
    out = []
    if not store.root.is_dir():
        return out
    for implhash in sorted(p.name for p in store.root.iterdir()):
        for version in store.versions(implhash):
            try:
                record = store.record(implhash, version)
            except (BundleError, ModelNotFound):
                continue  # the node logs malformed bundles; the page just leaves them out
            out.append({"name": record.name, "implhash": implhash, "version": version,
                        "impl": record.impl, "fullhash": record.fullhash,
                        "labels": len(record.labels)})
    return out


def _name(enum, value) -> str:
    try:
        return enum(value).name.lower().replace("_", " ")
    except (ValueError, TypeError):
        return str(value)


def _static(data: str | bytes, mimetype: str) -> Response:
    response = Response(data, 200, mimetype=mimetype)
    response.headers.update(_HEADERS)
    return response


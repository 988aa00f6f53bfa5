"""The REST front: legacy `/api/v1alpha` plus health checks, served by gunicorn.

Stateless: it reads backend state the node publishes in redis, queues jobs on
the model's stream and waits for the job's reply. The console's calls and Open
Inference Protocol `/v2` are blueprints beside it; errors become HTTP answers in
one place, `common.error_response`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid as uuidlib

from flask import Flask, Response, request

from aiserving import metrics
import aiserving
from aiserving.api.auth import Guard
from aiserving.api.intake import ask
from aiserving.api.rest import console, openapi
from aiserving.api.rest import fleet as fleet_rest
from aiserving.api.rest import oip as oip_rest
from aiserving.api.rest.common import error_response, json_body, opt_str
from aiserving.api.rest.common import json_response as _json
from aiserving.broker import broker as brk
from aiserving.config import Settings
from aiserving.errors import AiservingError, BadRequest, NotReady, QueueFull, RequestTimeout
from aiserving.jobs.inputs import check_input_path, limit_pixels
from aiserving.logs import setup_logging

log = logging.getLogger(__name__)

PREFIX = "/api/v1alpha"


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:  # in a front worker process gunicorn started
        resolved = os.environ.get("AISRV_RESOLVED_SETTINGS")
        settings = Settings(json.loads(resolved)) if resolved else Settings.load()
        setup_logging(settings["log.level"], "front")  # timestamped, repeats summed up
    broker = brk.Broker(settings.redis_url, settings["node.name"],
                        queue_max=settings["queue.max_len"], result_ttl=settings["result.ttl_s"],
                        inline_max=settings["queue.max_inline_bytes"],
                        prefix=settings["redis.key_prefix"],
                        shared_inputs=settings["fleet.shared_inputs"])
    timeout = float(settings["request.timeout_s"])
    max_input = settings["request.max_image_bytes"]
    waiting = WaitingLimit(settings["http.max_waiting_per_model"]
                           or max(1, settings["http.connections"] // 2))
    app = Flask("aiserving")
    app.config["MAX_CONTENT_LENGTH"] = settings["http.max_body_bytes"]
    limit_pixels(settings["request.max_pixels"])
    app.register_blueprint(oip_rest.blueprint(settings, broker, waiting))  # /v2: KServe v2

    guard = Guard.from_settings(settings)
    for made in (metrics.in_flight, metrics.requests, metrics.request_seconds):
        made()  # before the first requests, which arrive together
    admin_paths = {f"{PREFIX}/switch", *console.ADMIN_PATHS}

    @app.before_request
    def _authenticate():
        # The console's page is static files, open; its calls are guarded as any other.
        if guard.active and request.path != "/healthz" and not console.is_page(request.path):
            # Management: what changes the models a node runs.
            admin = request.method == "POST" and request.path in admin_paths
            guard.authenticate(request.remote_addr, request.headers.get("Authorization"),
                               admin, f"{request.method} {request.path}")
            if admin:  # the socket's peer: no proxy stands in front, X-Forwarded-For is a lie
                guard.check_address(request.remote_addr)

    # Errors of the legacy calls (and the console's) in the legacy body; /v2 has its own.
    app.register_error_handler(Exception, lambda exc: error_response(exc, _legacy_error))

    @app.post(f"{PREFIX}/detect")
    def detect():
        t0, seen = time.perf_counter(), {"model": ""}
        metrics.in_flight().inc()
        try:
            response = _detect(seen)
        except AiservingError as exc:
            metrics.requests().labels("rest", seen["model"], str(exc.code)).inc()
            raise
        finally:
            metrics.in_flight().dec()
            metrics.request_seconds().labels("rest", seen["model"]).observe(
                time.perf_counter() - t0)
        metrics.requests().labels("rest", seen["model"], "ok").inc()
        return response

    def _detect(seen: dict):
        body = json_body()
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise BadRequest("field 'path' (absolute path of the input file) is required")
        bid = opt_str(body, "bid")

        def plan(fresh: bool):
            backend = broker.route(bid, fresh=fresh)
            seen["model"] = backend.get("serving") or ""
            check_input_path(path, backend, max_input, settings["input.roots"])
            return backend, backend["version"], {"path": path}

        _, uuid, reply = ask(broker, plan, timeout, waiting)
        if reply is None:
            raise RequestTimeout(f"no result within {timeout:.0f} s; it will still be stored "
                                 f"under uuid {uuid}")
        # The result is already JSON text: splice it in rather than parse and re-encode it.
        text = b'{"status":"success","result":' + reply[1:] + b',"message":"","uuid":"' + \
            uuid.encode() + b'"}'
        return Response(text, 200, mimetype="application/json")

    @app.post(f"{PREFIX}/switch")
    def switch_post():
        body = json_body()
        args = {k: opt_str(body, k) for k in ("bid", "btype", "model", "mode", "device",
                                               "encrypted", "a64key", "pvtkey")}
        answer = broker.command("switch", args, uuidlib.uuid4().hex)
        return _json({"status": "success", "bid": answer["bid"]})

    @app.get(f"{PREFIX}/switch")
    def switch_get():
        backend = broker.backend(request.args.get("bid") or None)
        return _json({**backend["switch"], "bid": backend["bid"],
                      "sizing": backend.get("sizing")})

    build = aiserving.build_info()
    described = json.dumps(openapi.document())

    @app.get("/openapi.json")
    def openapi_json():
        return Response(described, 200, mimetype="application/json")

    @app.get("/metrics")
    def metrics_text():
        text, kind = metrics.exposition(broker.queue_depths)
        return Response(text, 200, content_type=kind)

    @app.get("/healthz")
    def healthz():
        broker.db.ping()
        return _json({"status": "success", "version": build["version"], "compiled": build["compiled"]})

    @app.get("/readyz")
    def readyz():
        if not broker.node_alive():
            raise NotReady("the node daemon is not running")
        running = [b["bid"] for b in broker.backends() if b.get("serving")]
        if not running:
            raise NotReady("no model is loaded and running")
        return _json({"status": "success", "backends": running,
                      "redis_persists": broker.persists()})

    app.register_blueprint(console.blueprint(settings, broker, waiting, guard))
    app.register_blueprint(fleet_rest.blueprint(broker))  # GET /api/v1alpha/nodes
    return app


class WaitingLimit:
    """Requests of this front process waiting on each model, bounded per model.

    A model that is stuck or slow can hold at most `limit` of the process's
    request slots; the rest stay free for the other models, whose callers see
    their normal latency. Past the limit a caller gets 503 at once.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, model: str | None):
        key = model or ""
        with self._lock:
            if self._count.get(key, 0) >= self.limit:
                raise QueueFull(f"{self.limit} requests already wait for model {key} in this "
                                "front process (http.max_waiting_per_model); retry later")
            self._count[key] = self._count.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._count[key] -= 1



def _legacy_error(message: str, status: int) -> Response:
    return _json({"status": "failed", "message": message}, status)

"""What every REST door of the front shares: JSON bodies in and out, and the one
place an error becomes an HTTP answer.

Each door (legacy `/api/v1alpha`, the console's calls, Open Inference Protocol
`/v2`) writes an error body in its own format, but the status, the headers and
what is logged are decided here, once.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Callable

import redis
from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from aiserving.api.auth import TooManyFailures, Unauthenticated
from aiserving.errors import AiservingError, BadRequest

log = logging.getLogger("aiserving.api.rest")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff in JSON text


def json_response(payload: dict, status: int = 200) -> Response:
    response = Response(json.dumps(payload), status, mimetype="application/json")
    if status == 503:  # not ready yet: worth asking again in a moment
        response.headers["Retry-After"] = "1"
    return response


def error_response(exc: Exception, render: Callable[[str, int], Response]) -> Response:
    """The HTTP answer to any exception; `render(message, status)` writes the door's body.

    Never a traceback: an error of ours carries its message and status, a redis
    outage is a fast 503 (never a hang or a 500), anything unexpected goes to the
    log and answers a bare 500."""
    headers = {}
    if isinstance(exc, AiservingError):
        message, status = exc.message, exc.http_status
        if status == 503:  # not ready, a full queue, the daemon busy: each passes
            headers["Retry-After"] = "1"
        elif isinstance(exc, TooManyFailures):
            headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, redis.RedisError):
        log.warning("redis error on %s %s: %s", request.method, request.path, exc)
        message, status = f"redis is unavailable ({type(exc).__name__}); retry shortly", 503
        headers["Retry-After"] = "1"
    elif isinstance(exc, RequestEntityTooLarge):  # werkzeug's words name no limit
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message, status = (f"the request body is over the limit of {limit} bytes (setting "
                           f"http.max_body_bytes)"), 413
    elif isinstance(exc, HTTPException):
        message, status = exc.description, exc.code or 500
    else:
        log.exception("unexpected error on %s %s", request.method, request.path)
        message, status = "internal error; see the node's log", 500
    response = render(message, status)
    response.headers.update(headers)
    return response


def json_body() -> dict:
    """The request's JSON object, or BadRequest."""
    return json_object(body_bytes())


def body_bytes() -> bytes:
    try:
        return request.get_data(cache=False)
    except OSError:  # the read time-out of a slow or half-sent body
        raise BadRequest("the request body did not arrive in time") from None


def json_object(data: bytes) -> dict:
    """`data` as a JSON object, or BadRequest.

    Parsed here rather than by Flask: a deeply nested body raises RecursionError,
    which is the caller's mistake (400), not the node's (500)."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(data):
        try:
            # JSON can escape a lone surrogate ("\ud800"), which no UTF-8 text holds: redis
            # and the file system would fail on it deep inside, so it is refused here.
            # (Only bodies that escape a surrogate at all pay for this walk.)
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("the request body holds a string that is not valid Unicode "
                             "(a lone surrogate escape)") from None
    return body


def opt_str(body: dict, key: str) -> str:
    """An optional text field ("" when absent); a number is taken as its text."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be a string")
    return str(value)

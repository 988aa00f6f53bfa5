"""The one place node errors become gRPC answers.

rpcs that answer `ResultReply` carry the legacy code in it: a few errors keep
their own code wherever they happen (limits 100, too many backends 101,
already running 102, malformed fullhash 103, a full queue); any other error
takes the code of the rpc (104 import, 105 delete, 107 reload, 108 terminate,
110/111 inference, ...) -- an unknown bid too, as the old product answered. Other
rpcs answer a gRPC status. No traceback leaves the node: they go to the log.
"""

from __future__ import annotations

import logging
from typing import Callable

import grpc
import redis

from aiserving.api.grpc.protocol import common_pb2
from aiserving.errors import (AiservingError, BackendLimit, BackendRunning, BadFullhash,
                              QueueFull, TooManyBackends)

log = logging.getLogger(__name__)

_KEEP_CODE = (BackendLimit, TooManyBackends, BackendRunning, BadFullhash, QueueFull)

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
           409: grpc.StatusCode.ALREADY_EXISTS,
           413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.FAILED_PRECONDITION,
           429: grpc.StatusCode.RESOURCE_EXHAUSTED,
           503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


def result(rpc_code: int, operation: Callable[[], str | None],
           keep: tuple = _KEEP_CODE) -> "common_pb2.ResultReply":
    """Run an operation; its return value is `msg`, its error a legacy code.

    Errors of the classes in `keep` answer their own code; any other error
    answers `rpc_code`.
    """
    try:
        return common_pb2.ResultReply(code=0, msg=operation() or "")
    except AiservingError as exc:
        code = exc.code if isinstance(exc, keep) else rpc_code
        return common_pb2.ResultReply(code=code, msg=exc.message)
    except redis.RedisError as exc:
        return common_pb2.ResultReply(code=1, msg=f"redis is unavailable ({type(exc).__name__}); "
                                      "retry shortly")
    except Exception:
        log.exception("gRPC operation failed")
        return common_pb2.ResultReply(code=1, msg="internal error; see the node's log")


def answer(context, operation: Callable):
    """Run an operation that answers a message; errors become a gRPC status."""
    try:
        return operation()
    except AiservingError as exc:
        context.abort(_STATUS.get(exc.http_status, grpc.StatusCode.INTERNAL), exc.message)
    except redis.RedisError as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"redis is unavailable ({type(exc).__name__})")
    except Exception:
        log.exception("gRPC operation failed")
        context.abort(grpc.StatusCode.INTERNAL, "internal error; see the node's log")

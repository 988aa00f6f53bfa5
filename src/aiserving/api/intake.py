"""Taking inference requests in: route, queue, wait -- the path every door shares.

The input checks themselves are `jobs.inputs`' (the worker makes some of them again);
the doors import them from there.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid as uuidlib
from typing import Callable

from aiserving.broker.broker import Broker, StaleRoute
from aiserving.errors import AiservingError, NotReady

ROUTE_TRIES = 4  # routes change only on loads and status changes: a retry or two at most


def submit(broker: Broker, backend: dict, uuid: str, *, path: str = "", image: bytes = b"",
           kind: str = "", reply: bool = False, deadline: float | None = None,
           version: str | None = None, tensors: tuple[bytes, bytes] | None = None) -> None:
    """Queue one job on the stream of the model the backend serves.

    `deadline` (wall-clock time) is when its caller stops waiting: a worker that
    reaches the job later drops it unrun, answering a time-out. `version`: that of
    a cached route (`Broker.route`); StaleRoute if it changed. `tensors`: an Open
    Inference Protocol raw tensor job, `oip.pack`'s (header, data).
    """
    serving = backend.get("serving")
    if not serving:
        raise NotReady(f"backend {backend['bid']} has no model running "
                       f"(status: {backend['switch']['status']})")
    # A waiting caller's reply goes to its process's reply list (`Broker.wait_reply`).
    fields: dict = {"uuid": uuid, "reply": broker.reply_list if reply else "0",
                    "t": repr(time.time())}
    if deadline is not None:
        fields["deadline"] = repr(deadline)
    if tensors is not None:
        fields["oip"], fields["tensors"] = tensors
    elif image:
        fields["image"] = image
        fields["type"] = kind if kind.isalnum() else ""
    else:
        fields["path"] = path
    broker.enqueue(serving, fields, version)


def ask(broker: Broker, plan: Callable[[bool], tuple[dict, str, dict]], timeout: float,
        waiting=None) -> tuple[dict, str, bytes | None]:
    """Route one request, queue it and wait for its reply, as every waiting door does.

    `plan(fresh)` checks the request against a route and returns (route, the routes'
    version, the job's inputs as `submit` keywords); after a stale route it runs again
    with `fresh` True, so a reload under load routes again instead of queueing where
    nobody reads. `waiting`: the door's `WaitingLimit`, if it has one. Returns the
    route taken, the request's uuid and its reply (None past `timeout` s); an error
    reply is raised as the error it carries.
    """
    uuid = uuidlib.uuid4().hex
    for attempt in range(ROUTE_TRIES):
        route, version, job = plan(attempt > 0)
        slot = waiting.slot(route.get("serving")) if waiting else contextlib.nullcontext()
        try:
            with slot:
                submit(broker, route, uuid, reply=True, deadline=time.time() + timeout,
                       version=version, **job)
                reply = broker.wait_reply(uuid, timeout)
        except StaleRoute:
            continue  # the backend changed since the route was cached: nothing was queued
        if reply is not None and reply[:1] == b"E":
            raise AiservingError.from_wire(json.loads(reply[1:]))
        return route, uuid, reply
    raise NotReady("the node's backends are changing; retry shortly")

"""Connecting to the node's redis: a client per URL, with time-outs that notice a vanished host.

What the URL means is `config.redis_url`'s; this module makes the connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis
from redis.connection import UnixDomainSocketConnection
from redis.sentinel import Sentinel

from aiserving.config.redis_url import parse

log = logging.getLogger(__name__)

# A redis host that vanished (powered off, cut off) answers nothing: without these a
# connect would wait minutes for the kernel, and a blocking read forever.
_CONNECT_TIMEOUT_S = 5.0
_KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
_SENTINEL_TIMEOUT_S = 2.0  # a sentinel query is one short round trip


def connect(url: str, db: int | None = None, **extra) -> redis.Redis:
    """A client of the redis `url` names, in `db` (None: the URL's own db number).

    Every connection the client makes is set up afresh from the URL, so after an
    outage or a failover the next command reaches whatever answers for it now.
    """
    target = parse(url)
    options = dict(target.options, db=target.db if db is None else db)
    if target.sentinels:
        tcp = _tcp_defaults()
        sentinel_options = dict(tcp, socket_timeout=_SENTINEL_TIMEOUT_S,
                                **target.sentinel_options)
        manager = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options)
        return manager.master_for(target.service, **{**tcp, **options, **extra})
    if options.get("connection_class") is not UnixDomainSocketConnection:
        options = {**_tcp_defaults(), **options}
    return redis.Redis.from_pool(redis.ConnectionPool(**{**options, **extra}))


def _tcp_defaults() -> dict:
    keepalive = {getattr(socket, name): value for name, value in _KEEPALIVE
                 if hasattr(socket, name)}
    return {"socket_connect_timeout": _CONNECT_TIMEOUT_S, "socket_keepalive": True,
            "socket_keepalive_options": keepalive}


class Outage:
    """Whether redis answers, as the threads of one process see it.

    Each loop that talks to redis reports `ok()` or `failed(exc)` instead of
    dying; the first failure of an outage is logged once, with how long it lasted
    when it ends. `backoff()` is the pause before the next try.
    """

    def __init__(self, who: str):
        self.who = who
        self.since: float | None = None
        self._lock = threading.Lock()

    def ok(self) -> bool:
        """Redis answered; True when that ends an outage."""
        if self.since is not None:
            with self._lock:
                if self.since is not None:
                    log.warning("%s: redis answers again after %.1f s", self.who,
                                time.monotonic() - self.since)
                    self.since = None
                    return True
        return False

    def failed(self, exc: Exception) -> None:
        with self._lock:
            if self.since is None:
                self.since = time.monotonic()
                log.error("%s: redis does not answer (%s: %s); retrying", self.who,
                          type(exc).__name__, exc)

    def down_for(self) -> float:
        since = self.since
        return 0.0 if since is None else time.monotonic() - since

    def backoff(self) -> float:
        return min(0.1 * 2 ** min(self.down_for(), 6), 2.0)

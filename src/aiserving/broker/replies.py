"""Replies to waiting requests: one reply list per front process, not one per request.

A waiting request used to block on a list of its own (`aisrv:reply:<uuid>`):
one BLPOP per request in the front, and an RPUSH plus an EXPIRE per item in the
worker. Now each process that waits (a gunicorn worker of the REST front, the
daemon for the OIP gRPC door) owns one list, `<prefix>replies:<node>:<pid>:<nonce>`,
names it in the jobs it queues, and one pump thread pops it and hands each reply
to its waiter. A worker pushes a whole batch's replies for one list in one RPUSH,
and the pump drains whatever has arrived with one LPOP: at concurrency the redis
commands per request fall from three to a fraction of one.

Whether or not workers store every result in db 5 (`result.store_answered`), a
caller that stopped waiting (its time-out passed, or redis went away under it) is
promised its result there, under its uuid: the pump stores it when it comes.

Under gevent (the front) the thread and events are greenlets, so this costs no OS thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid as uuidlib

import redis

log = logging.getLogger(__name__)

LIST_PREFIX = "aisrv:replies:"  # under the default key prefix (`redis.key_prefix`)
LIST_TTL_S = 120  # a list whose process died goes away by itself
_BLOCK_S = 5  # the pump's blocking pop; it also wakes to tidy up this often
_DRAIN = 512  # replies popped at once after the blocking pop
_EARLY_KEEP_S = 120.0  # a reply with no waiter (yet) is kept this long
_GONE_KEEP_S = 3600.0  # a caller that gave up has its result stored if it comes this soon


def stored_text(reply: bytes) -> bytes | None:
    """What legacy clients find in db 5 for a reply (see `broker.encode_result`): the
    result's JSON text, a failure's status, nothing for tensors (no legacy client reads
    an Open Inference Protocol answer)."""
    kind, body = reply[:1], reply[1:]
    if kind == b"R":
        return body
    if kind == b"E":
        wire = json.loads(body)
        return json.dumps({"status": "failed", "code": wire.get("code"),
                           "message": wire.get("message")}).encode()
    return None


def frame(uuid: str, reply: bytes) -> bytes:
    """One entry of a reply list: the uuid's length, ':', the uuid, then the reply."""
    u = uuid.encode("utf-8")
    return b"%d:%s%s" % (len(u), u, reply)


def unframe(entry: bytes) -> tuple[str, bytes]:
    head, _, rest = entry.partition(b":")
    n = int(head)
    return rest[:n].decode("utf-8"), rest[n:]


def is_reply_list(key: bytes | str, lists: str = LIST_PREFIX) -> bool:
    """A job's `reply` field names a list of ours (`lists`: their common start); a job
    never makes a worker write elsewhere."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text.startswith(lists) and len(text) < 256


class _Waiter:
    __slots__ = ("event", "reply", "error")

    def __init__(self):
        self.event = threading.Event()
        self.reply: bytes | None = None
        self.error: Exception | None = None


class ReplyBox:
    """This process's reply list and the pump that delivers what arrives on it."""

    def __init__(self, connection: redis.Redis, node: str, lists: str = LIST_PREFIX, *,
                 result_ttl: int = 3600):
        """`connection`: db 5, where the list lives and where the result of a caller
        that gave up is stored for `result_ttl` s."""
        self.pid = os.getpid()
        self.key = f"{lists}{node}:{self.pid}:{uuidlib.uuid4().hex[:8]}"
        self._db = connection
        self._result_ttl = result_ttl
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._early: dict[str, tuple[float, bytes]] = {}
        self._gone: dict[str, float] = {}  # uuid -> when its caller stopped waiting
        self._down: Exception | None = None  # the pump's last redis error, until it recovers
        self._pump = threading.Thread(target=self._run, name="reply-pump", daemon=True)
        self._pump.start()

    def wait(self, uuid: str, timeout: float) -> bytes | None:
        """The reply for `uuid` (it may have arrived already); None after `timeout` s.

        Raises the redis error that stopped the pump: a request must not wait out its
        time-out while nobody can read its reply."""
        waiter = _Waiter()
        with self._lock:
            early = self._early.pop(uuid, None)
            if early is not None:
                return early[1]
            if self._down is not None:
                raise self._down
            self._waiters[uuid] = waiter
        try:
            waiter.event.wait(max(timeout, 0.01))
        finally:
            with self._lock:
                self._waiters.pop(uuid, None)
                if waiter.reply is None:  # its result goes to db 5 when it comes
                    self._gone[uuid] = time.monotonic()
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply

    def _run(self) -> None:
        backoff = 0.1
        last_tidy = time.monotonic()
        while True:
            try:
                if self._down is not None:
                    self._db.ping()  # redis is back: waits may start again at once
                    with self._lock:
                        self._down = None
                got = self._db.blpop([self.key], timeout=_BLOCK_S)
                entries = []
                if got:
                    entries = [got[1]]
                    if len(self._waiters) > 1:  # others wait: theirs may be there too
                        entries += self._db.lpop(self.key, _DRAIN) or []
                if time.monotonic() - last_tidy > _BLOCK_S:
                    last_tidy = time.monotonic()
                    self._tidy()
                self._deliver(entries)
                backoff = 0.1
            except redis.RedisError as exc:
                self._fail_all(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # a malformed entry must not stop every later reply
                log.exception("reply pump: an entry could not be delivered")

    def _deliver(self, entries: list[bytes]) -> None:
        now = time.monotonic()
        late = []
        with self._lock:
            for entry in entries:
                uuid, reply = unframe(entry)
                waiter = self._waiters.pop(uuid, None)
                if waiter is not None:
                    waiter.reply = reply
                    waiter.event.set()
                elif self._gone.pop(uuid, None) is not None:
                    late.append((uuid, reply))
                else:
                    self._early[uuid] = (now, reply)
        if late:
            pipe = self._db.pipeline(transaction=False)
            for uuid, reply in late:
                text = stored_text(reply)
                if text is not None:
                    pipe.set(uuid, text, ex=self._result_ttl)
            pipe.execute()

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            self._down = exc
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = exc
            waiter.event.set()

    def _tidy(self) -> None:
        # Replies nobody came for are dropped after a while, and so are the callers that
        # gave up on a job that never ended (its worker dropped it, or died with it).
        now = time.monotonic()
        with self._lock:
            for uuid in [u for u, (t, _) in self._early.items() if t < now - _EARLY_KEEP_S]:
                del self._early[uuid]
            for uuid in [u for u, t in self._gone.items() if t < now - _GONE_KEEP_S]:
                del self._gone[uuid]

"""Everything the node keeps in redis: job streams, results, replies, shared state.

Jobs: one stream per model (`<prefix>jobs:<fullhash>`) read by one consumer
group, `workers`, so every inference process serving that model -- on this
box or another box sharing the redis -- takes its share and no job is run
twice. A job naming an input file only the accepting box can read goes to
that node's own stream of the model (`...:@node:<name>`), and one naming a file
under a folder every node mounts (`fleet.shared_inputs`) to that folder's
stream (`...:@share:<hash>`), read by the nodes declaring it; inline inputs go
to the model's stream. A worker reads all the streams it may serve in one
XREADGROUP; the message ids it holds carry their stream as a tag (`tag_id`).
Finished jobs are acknowledged and deleted, so the stream length is the number
of jobs waiting or in flight: that is what the queue bound checks, per stream.
Every key name starts with the key prefix (`redis.key_prefix`, "aisrv:"), so
fleets with different prefixes share one redis without seeing each other.

Results: the post-processing output as JSON text in db 5 under the request uuid
(legacy clients poll it), with a TTL; a waiting request's reply goes to the reply
list of the process that waits (db 5, see `replies.py`), so nothing polls. With
`result.store_answered` off, a result its waiting caller received is not stored:
only those of jobs nobody waits on (gRPC InferenceLocal/Remote) and of callers
that stopped waiting (their process stores it when it comes).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Iterable

import redis

from aiserving.broker import replies
# The names the doors, the node and the workers reach through `brk` (keys and
# connections have modules of their own).
from aiserving.broker.connection import Outage, connect  # noqa: F401
from aiserving.broker.keys import (DEFAULT_PREFIX, GROUP, NODE_TAG, REPLY_TTL_S,  # noqa: F401
                                   RESULT_DB, NodeKeys, inline_key, inline_size, reply_key,
                                   share_tag, stream_key, tag_id, untag_id)
from aiserving.config.redis_url import home_db
from aiserving.errors import AiservingError, BackendNotFound, NotReady, QueueFull

log = logging.getLogger(__name__)


REPUBLISHING = ("the node is publishing its backends again (its redis restarted empty); "
                "retry in a moment")

# KEYS: stream, its inline-bytes counter, the node's routes version. ARGV: max jobs,
# this job's inline bytes, max inline bytes, the routes version the caller routed by
# ('' when it read the record itself), then the job's fields.
_ENQUEUE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return 'stale' end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local size = tonumber(ARGV[2])
if size > 0 then
  if tonumber(redis.call('GET', KEYS[2]) or '0') + size > tonumber(ARGV[3]) then
    return 'bytes'
  end
  redis.call('INCRBY', KEYS[2], size)
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
"""


class StaleRoute(Exception):
    """The routes changed after the caller read them: route again."""


def route_of(record: dict) -> dict:
    """The part of a published backend record the front routes a request by.

    Labels and the rest of the model record stay out: a model with a thousand
    labels would otherwise be fetched and parsed for every request.
    """
    model = record.get("model") or {}
    return {"bid": record["bid"], "serving": record.get("serving"),
            "switch": {"status": record["switch"]["status"]},
            "model": {"modelext": model.get("modelext") or "", "name": model.get("name") or "",
                      "version": model.get("version") or ""},
            "oip": record.get("oip")}


class Broker:
    """Redis access of the front and the workers (the node adds its own writes)."""

    def __init__(self, url: str, node: str, *, queue_max: int = 1000, result_ttl: int = 3600,
                 inline_max: int = 256 * 1024 ** 2, prefix: str = DEFAULT_PREFIX,
                 shared_inputs: Iterable[str] = (), store_answered: bool = True):
        # No socket timeout: blocking reads wait as long as asked.
        self.db = connect(url)
        self.home_db = home_db(url)
        self.results = connect(url, RESULT_DB)
        self.keys = NodeKeys(node, prefix)
        self.queue_max = queue_max
        self.inline_max = inline_max
        # Folders (resolved) every node of the fleet mounts at the same place, and the
        # tags of their streams; the first of nested ones that holds a file wins.
        self.shares = {os.path.realpath(f).rstrip(os.sep) or os.sep: share_tag(
            os.path.realpath(f).rstrip(os.sep) or os.sep) for f in shared_inputs}
        self.tags = ["", NODE_TAG, *sorted(set(self.shares.values()))]
        self.result_ttl = result_ttl
        self.store_answered = store_answered
        self._enqueue = self.db.register_script(_ENQUEUE)
        self._routes: dict[str, dict] | None = None  # bid -> route, as of `_version`
        self._rest_bid = ""
        self._version = ""
        self.republishing = False  # as of the last read of the routes
        self._url = url
        self._box: replies.ReplyBox | None = None
        self._box_lock = threading.Lock()
        self._expired: dict[bytes, float] = {}  # reply list -> when its TTL was last renewed

    # --- front side -------------------------------------------------------------

    def backend(self, bid: str | None) -> dict:
        """The published state of one backend (or of the REST door's backend)."""
        if not bid:
            bid = self.db.get(self.keys.rest_bid)
            if bid is None:
                raise NotReady("no model has been switched in on this node: POST "
                               "/api/v1alpha/switch first")
        raw = self.db.hget(self.keys.backends, bid)
        if raw is None:
            raise BackendNotFound(f"no backend {bid.decode() if isinstance(bid, bytes) else bid}")
        return json.loads(raw)

    def route(self, bid: str | None, fresh: bool = False) -> dict:
        """Where a request for `bid` (or for the REST door's backend) goes, from a cache.

        The cache is checked, not trusted: `enqueue` with the route's `version`
        refuses with StaleRoute if anything changed since, and the caller routes
        again with `fresh`. An unknown or not-serving backend is looked up afresh
        before it is refused.
        """
        tries = [True] if fresh or self._routes is None else [False, True]
        for refresh in tries:
            if refresh:
                self._refresh_routes()
            target = bid or self._rest_bid
            found = self._routes.get(target) if target else None
            if found is not None and found.get("serving") or refresh and found is not None:
                return {**found, "version": self._version}
        if self.republishing:
            raise NotReady(REPUBLISHING)
        if not target:
            raise NotReady("no model has been switched in on this node: POST "
                           "/api/v1alpha/switch first")
        raise BackendNotFound(f"no backend {target}")

    def route_table(self, fresh: bool = False) -> tuple[list[dict], str]:
        """Every route and their version, from the cache `route` keeps (re-read when
        `fresh`); enqueue with the version refuses a stale one as `route` does."""
        if fresh or self._routes is None:
            self._refresh_routes()
        return list(self._routes.values()), self._version

    def _refresh_routes(self) -> None:
        pipe = self.db.pipeline(transaction=True)  # one consistent view
        pipe.get(self.keys.version)
        pipe.get(self.keys.rest_bid)
        pipe.hgetall(self.keys.routes)
        version, rest_bid, routes = pipe.execute()
        # No counter yet: a version no enqueue will match, so nothing is queued by it.
        # The node publishes within a moment of starting, so no counter means redis
        # came back empty and the node has yet to publish its backends again.
        self.republishing = version is None
        self._version = (version or b"0").decode()
        self._rest_bid = (rest_bid or b"").decode()
        self._routes = {k.decode(): json.loads(v) for k, v in routes.items()}

    def backends(self) -> list[dict]:
        return [json.loads(v) for v in self.db.hvals(self.keys.backends)]

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting or in flight per model this node's backends serve (in every
        stream of the model its workers read)."""
        models = sorted({b["serving"] for b in self.backends() if b.get("serving")})
        pipe = self.db.pipeline(transaction=False)
        for model in models:
            for key in self.streams(model).values():
                pipe.xlen(key)
        counts = iter(pipe.execute())
        return {model: sum(next(counts) for _ in self.tags) for model in models}

    def streams(self, fullhash: str) -> dict[str, str]:
        """Tag -> key of every stream of a model this node's workers read."""
        return {tag: self.keys.stream(fullhash, tag) for tag in self.tags}

    def path_tag(self, path: str) -> str:
        """The tag of the stream a job naming input file `path` goes to: a shared
        folder's when the file (symlinks resolved) lies in one, else this node's own."""
        if self.shares:
            real = os.path.realpath(path)
            for folder, tag in self.shares.items():
                if real.startswith(folder + os.sep) or folder == os.sep:
                    return tag
        return NODE_TAG

    def persists(self) -> bool:
        """Whether redis keeps an append-only file: what it holds outlives its restart."""
        return bool(int(self.db.info("persistence").get("aof_enabled", 0)))

    def node_alive(self) -> bool:
        return bool(self.db.exists(self.keys.alive))

    def enqueue(self, fullhash: str, fields: dict[str, str | bytes | float],
                version: str | None = None) -> str:
        """Add a job to a model's stream, or raise QueueFull at once when it is full:
        `queue_max` jobs, or `inline_max` bytes of inline inputs held for the model.
        A job naming an input file goes to the stream of the nodes that can read it
        (`path_tag`).

        `version`: that of the route the caller took (`route`); StaleRoute if the
        routes changed since, and nothing is queued.
        """
        path = fields.get("path")
        stream = self.keys.stream(fullhash, self.path_tag(path) if path else "")
        size = inline_size(fields)
        args: list = [self.queue_max, size, self.inline_max, version or ""]
        for k, v in fields.items():
            args += [k, v]
        msg_id = self._enqueue(keys=[stream, self.keys.inline(fullhash),
                                     self.keys.version], args=args)
        if msg_id == b"stale":
            raise StaleRoute()
        if msg_id is None:
            raise QueueFull(f"the queue of model {fullhash} is full ({self.queue_max} jobs); "
                            "retry later")
        if msg_id == b"bytes":
            raise QueueFull(f"the queue of model {fullhash} holds its most inline input bytes "
                            f"({self.inline_max}, queue.max_inline_bytes); retry later")
        return msg_id

    @property
    def reply_list(self) -> str:
        """The list a job queued by this process names for its reply (`replies.py`)."""
        return self._reply_box().key

    def wait_reply(self, uuid: str, timeout: float) -> bytes | None:
        """Block until the reply of a job queued with `reply_list` arrives; None on
        timeout. See `encode_result`."""
        return self._reply_box().wait(uuid, timeout)

    def _reply_box(self) -> replies.ReplyBox:
        box = self._box
        if box is None or box.pid != os.getpid():  # made lazily, after any fork
            # Starting the pump yields (a greenlet under gevent): without the lock a second
            # request could make a second box, and wait on a list its reply never reaches.
            with self._box_lock:
                box = self._box
                if box is None or box.pid != os.getpid():
                    box = self._box = replies.ReplyBox(
                        connect(self._url, RESULT_DB), self.keys.node, self.keys.reply_lists,
                        result_ttl=self.result_ttl)
        return box

    def command(self, op: str, args: dict, cid: str, timeout: float = 15.0) -> dict:
        """Send a command to this node's daemon and wait for its answer.

        A command nobody took within `timeout` is taken back, so it never runs after its
        caller was told it failed; one the daemon took is waited for as long again.
        """
        text = json.dumps({"id": cid, "op": op, "args": args, "deadline": time.time() + timeout})
        self.db.rpush(self.keys.commands, text)
        reply = self.keys.command_reply(cid)
        got = self.db.blpop([reply], timeout=timeout)
        if got is None:
            if self.db.lrem(self.keys.commands, 1, text):
                raise NotReady("the node daemon is not taking commands (starting, or not "
                               "running); nothing was done: retry shortly")
            got = self.db.blpop([reply], timeout=timeout)
            if got is None:
                raise NotReady(f"the node daemon took the command but did not answer within "
                               f"{2 * timeout:.0f} s; GET /switch shows what it did")
        answer = json.loads(got[1])
        if "error" in answer:
            raise AiservingError.from_wire(answer["error"])
        return answer

    # --- worker side ------------------------------------------------------------

    def ensure_group(self, fullhash: str) -> None:
        for key in self.streams(fullhash).values():
            try:
                self.db.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, fullhash: str, consumer: str, count: int, block_ms: int | None,
             pending: bool = False) -> list[tuple[bytes, dict]]:
        """New jobs (or, with `pending`, this consumer's own unacknowledged ones) from
        every stream of the model this node reads, ids tagged (`tag_id`). Up to
        `count` per stream: the caller keeps what its batch has no room for."""
        streams = self.streams(fullhash)
        got = self.db.xreadgroup(GROUP, consumer, {k: "0" if pending else ">" for k in
                                                   streams.values()},
                                 count=count, block=None if pending else block_ms)
        if not got:
            return []
        tags = {k.encode(): t for t, k in streams.items()}
        # Entries deleted while pending come back with no fields: nothing left to do for them.
        return [(tag_id(tags[key if isinstance(key, bytes) else key.encode()], mid), f)
                for key, entries in got for mid, f in entries if f]

    def claim_stale(self, fullhash: str, consumer: str, idle_ms: int, count: int):
        """Take over jobs another (dead) consumer left unacknowledged for `idle_ms`."""
        jobs = []
        for tag, key in self.streams(fullhash).items():
            if len(jobs) >= count:
                break
            got = self.db.xautoclaim(key, GROUP, consumer, idle_ms, "0-0",
                                     count=count - len(jobs))
            jobs += [(tag_id(tag, mid), f) for mid, f in got[1] if f]
        return jobs

    def deliveries(self, fullhash: str, msg_id: bytes) -> int:
        tag, msg_id = untag_id(msg_id)
        rows = self.db.xpending_range(self.keys.stream(fullhash, tag), GROUP, min=msg_id,
                                      max=msg_id, count=1)
        return rows[0]["times_delivered"] if rows else 0

    def finish(self, fullhash: str, done: Iterable[tuple[bytes, str, bool, bytes, bytes]],
               inline: int = 0) -> None:
        """Answer jobs, then acknowledge and delete them.

        `done` rows: (message id, uuid, the job's `reply` field, legacy db-5 text,
        reply); `inline`: the bytes of inline inputs they held, released from the
        budget. A job whose caller waits gets its reply on the caller's reply list;
        its result is stored in db 5 under its uuid (legacy clients poll it) as any
        other job's, unless `store_answered` is off. Answers are written before the
        acknowledgement: a crash in between makes the job run again, never vanish.
        """
        ids: dict[str, list[bytes]] = {}  # stream tag -> message ids
        lists: dict[bytes, list[bytes]] = {}
        # Two pipelines, one per db, rather than one switching dbs: a SELECT pair per batch
        # is two more commands for redis than another round trip costs this process.
        answers = self.results.pipeline(transaction=False)  # db 5: results, reply lists
        for msg_id, uuid, reply_to, stored, reply in done:
            tag, msg_id = untag_id(msg_id)
            ids.setdefault(tag, []).append(msg_id)
            waits = bool(reply_to) and replies.is_reply_list(reply_to, self.keys.reply_lists)
            if waits:
                lists.setdefault(reply_to, []).append(replies.frame(uuid, reply))
            if uuid and (self.store_answered or not waits):
                # Legacy clients poll it; a waiting caller's process stores it instead only
                # if the caller stopped waiting (`replies.ReplyBox`).
                answers.set(uuid, stored, ex=self.result_ttl)
            if reply_to == b"1":  # queued by a node of an older release: a list per request
                answers.rpush(self.keys.reply(uuid), reply)
                answers.expire(self.keys.reply(uuid), REPLY_TTL_S)
        now = time.monotonic()
        for key, framed in lists.items():  # one push per waiting process, not per request
            answers.rpush(key, *framed)
            # The TTL only clears the list of a process that died; renewing it now and
            # then is enough while the list is in use.
            if now - self._expired.get(key, -1e9) > replies.LIST_TTL_S / 4:
                self._expired[key] = now
                answers.expire(key, replies.LIST_TTL_S)
        if len(self._expired) > 4096:
            self._expired.clear()
        if len(answers):
            answers.execute()
        pipe = self.db.pipeline(transaction=False)  # the node's db: the acknowledgement
        for tag, taken in ids.items():
            pipe.xack(self.keys.stream(fullhash, tag), GROUP, *taken)
            pipe.xdel(self.keys.stream(fullhash, tag), *taken)
        if ids and inline:
            pipe.decrby(self.keys.inline(fullhash), inline)
        pipe.execute()

    def fail_pending(self, fullhash: str, consumer: str, ids: list[str],
                     error: AiservingError) -> list[str]:
        """Answer jobs a consumer still holds with `error`, and take them off the stream.

        Only jobs still pending for that consumer: one it finished in the meantime
        keeps its result. Returns the uuids answered.
        """
        rows, inline = [], 0
        for tagged in ids:
            tag, msg_id = untag_id(tagged)
            stream = self.keys.stream(fullhash, tag)
            held = self.db.xpending_range(stream, GROUP, min=msg_id, max=msg_id, count=1,
                                          consumername=consumer)
            entry = self.db.xrange(stream, min=msg_id, max=msg_id, count=1) if held else []
            if not entry:
                continue
            fields = entry[0][1]
            uuid = fields.get(b"uuid", b"").decode()
            rows.append((tag_id(tag, msg_id), uuid, fields.get(b"reply"),
                         failure_text(error), encode_error(error)))
            inline += inline_size(fields)
        if rows:
            self.finish(fullhash, rows, inline)
        return [r[1] for r in rows]

    def forget_consumer(self, fullhash: str, consumer: str) -> None:
        for key in self.streams(fullhash).values():
            try:
                self.db.xgroup_delconsumer(key, GROUP, consumer)
            except redis.ResponseError:  # no such stream or group: nothing to forget there
                pass


# A reply is one byte of kind, then JSON: b"R" + the result's JSON text, or
# b"E" + an error's wire dict. The front splices the result text into its
# response without parsing it again.

def encode_result(result_json: str) -> bytes:
    return b"R" + result_json.encode("utf-8")


def encode_error(error: AiservingError) -> bytes:
    return b"E" + json.dumps(error.to_wire()).encode("utf-8")


def failure_text(error: AiservingError) -> bytes:
    """What legacy clients find in db 5 for a request that failed."""
    return json.dumps({"status": "failed", "code": error.code, "message": error.message}).encode()

"""The node's command channel: what the REST front asks the daemon to do, over redis.

The front is stateless and runs in other processes: a load (`POST /switch`) or an
unload (the console) goes to the daemon as a command on the node's list
(`Broker.command`), and its answer comes back on a reply key of its own. The same
loop keeps the node's `alive` key fresh and republishes the backends' state when
redis comes back from an outage (it may have restarted empty).
"""

from __future__ import annotations

import json
import logging
import time

import redis

from aiserving.broker import broker as brk
from aiserving.bundle.crypto import key_for
from aiserving.errors import AiservingError, BadRequest, NotReady

log = logging.getLogger("aiserving.node")


class CommandDesk:
    def __init__(self, node):
        self.node = node

    def run(self) -> None:
        """The node's `commands` thread, until the node stops."""
        node = self.node
        db = brk.connect(node.redis_url)
        while not node.stopping.is_set():
            try:
                db.set(node.keys.alive, "1", ex=5)
                if node.outage.ok():
                    node.republish()
                got = db.blpop([node.keys.commands], timeout=1)
            except redis.RedisError as exc:
                node.outage.failed(exc)
                node.stopping.wait(node.outage.backoff())
                continue
            if got is None:
                continue
            try:
                command = json.loads(got[1])
                cid = str(command["id"])
                deadline = float(command.get("deadline") or 0)
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed command")
                continue
            try:
                if deadline and time.time() > deadline:
                    # Its caller is told it was not run (or is gone): running it now would
                    # make that a lie.
                    log.warning("dropping command %s %s: its caller stopped waiting",
                                command.get("op"), cid)
                    raise NotReady("the node daemon took the command too late to run it; "
                                   "nothing was done: retry")
                answer = self._run(command.get("op"), command.get("args") or {})
            except AiservingError as exc:
                answer = {"error": exc.to_wire()}
            except Exception as exc:
                log.exception("command %s failed", command.get("op"))
                answer = {"error": AiservingError(f"internal error: {type(exc).__name__}").to_wire()}
            key = node.keys.command_reply(cid)
            try:
                db.pipeline().rpush(key, json.dumps(answer)).expire(key, 60).execute()
            except redis.RedisError as exc:  # its caller got an error of its own already
                node.outage.failed(exc)

    def _run(self, op: str, args: dict) -> dict:
        if op == "switch":
            fields = {k: str(args.get(k) or "") for k in ("bid", "btype", "model", "mode", "device")}
            secret = key_for(args.get("encrypted"), str(args.get("a64key") or ""),
                             str(args.get("pvtkey") or ""))
            return {"bid": self.node.switch(**fields, secret=secret)}
        if op == "terminate":  # the console's unload
            bid = str(args.get("bid") or "")
            self.node.terminate_backend(bid)
            return {"bid": bid}
        raise BadRequest(f"unknown command {op!r}")

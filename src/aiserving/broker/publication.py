"""What the node tells everyone else through redis: its backends' records and routes.

The full record of each backend (`aisrv:node:<name>:backends`) is read by the gRPC
servicers, `GET /switch` and other nodes; the routing part alone (`…:routes`) by
the REST fronts on every request, from a cache they check against a version
counter that every change bumps (`Broker.route`).
"""

from __future__ import annotations

import json

import redis

from aiserving.broker import broker as brk


class Publication:
    """Writes what changed since the last publication; everything again after an outage."""

    def __init__(self, db: redis.Redis, keys: brk.NodeKeys, outage: brk.Outage):
        self.db, self.keys, self.outage = db, keys, outage
        self._published: dict[str, str] = {}  # bid -> record text as last published
        self._rest: str | None = None  # rest_bid as last published (None: never)

    def forget(self) -> None:
        """Redis may have lost it all (a restart): the next `publish` writes everything."""
        self._published, self._rest = {}, None

    def publish(self, records: dict[str, dict], rest_bid: str | None) -> None:
        """Write changed backend records to redis; never raises for an outage.

        While redis does not answer, nothing counts as published, so every round of
        the supervisor tries to publish everything again.
        """
        current = {bid: json.dumps(r) for bid, r in records.items()}
        changed = {bid: text for bid, text in current.items() if self._published.get(bid) != text}
        gone = [bid for bid in self._published if bid not in current]
        rest = rest_bid or ""
        if not (changed or gone or rest != self._rest):
            return
        pipe = self.db.pipeline()
        if rest:
            pipe.set(self.keys.rest_bid, rest)
        else:
            pipe.delete(self.keys.rest_bid)
        if changed:
            pipe.hset(self.keys.backends, mapping=changed)
            pipe.hset(self.keys.routes, mapping={
                bid: json.dumps(brk.route_of(records[bid])) for bid in changed})
        if gone:
            pipe.hdel(self.keys.backends, *gone)
            pipe.hdel(self.keys.routes, *gone)
        # Fronts route from a cache; this makes their next enqueue re-read it.
        pipe.incr(self.keys.version)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # Never fails the operation that changed the state: the supervisor
            # publishes everything again (a restarted redis lost it all) once
            # redis answers.
            self.outage.failed(exc)
            self.forget()
            return
        self.outage.ok()
        self._published, self._rest = current, rest

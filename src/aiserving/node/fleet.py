"""The fleet registry: which nodes share this redis, what each runs, and how loaded it is.

Every node announces itself on a heartbeat (`Announcer`, a thread of the node daemon):
one JSON entry per node under a key that expires after `fleet.node_ttl_s`, so a node
that vanishes (killed, its box off) drops out by itself, judged by redis's clock
alone: the nodes' clocks may disagree. A node that stops cleanly withdraws at once.
The REST front (`GET /api/v1alpha/nodes`) and the gRPC `aiserving.fleet.v1.Fleet`
service read the live entries through `NodeRegistry.nodes()`.

Framework-free: the backend types a node can run come from the probe the node
already runs in child processes (`backends.supported_types`).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import redis

import aiserving
from aiserving.broker import broker as brk
from aiserving.node.resources import node_resources

log = logging.getLogger(__name__)

#: how often resources are measured at most: NVML and the disk are not free to ask
RESOURCES_EVERY_S = 5.0
#: how often the consumers of nodes gone from the fleet are looked for
TIDY_EVERY_S = 60.0

# The live entries, sorted by the caller; names whose entry expired leave the set in
# the same step, so a node announcing again meanwhile is never dropped from it.
_LIVE = """
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local entry = redis.call('GET', ARGV[1] .. name)
  if entry then out[#out + 1] = entry else redis.call('SREM', KEYS[1], name) end
end
return out
"""


class FleetKeys:
    """The registry's key names, built here only: under the fleet's `redis.key_prefix`."""

    def __init__(self, prefix: str = "aisrv:"):
        self.names = f"{prefix}fleet:nodes"  # set: the names of nodes that announced
        self.entry_prefix = f"{prefix}fleet:node:"  # + name: the node's JSON, with a TTL
        # hash: model name -> {"node", "at"}: who served it last, so a request for a model
        # whose nodes are all gone is told so (503) rather than that it never existed (404)
        self.models = f"{prefix}fleet:models"

    def entry(self, name: str) -> str:
        return self.entry_prefix + name


class NodeRegistry:
    """Reads and writes the registry in one redis (db 0)."""

    def __init__(self, db: redis.Redis, keys: FleetKeys | None = None):
        self.db = db
        self.keys = keys or FleetKeys()
        self._live = db.register_script(_LIVE)

    def announce(self, info: dict, ttl_s: float) -> None:
        """Write (or renew) a node's entry; it expires `ttl_s` after the last call."""
        name = info["name"]
        pipe = self.db.pipeline(transaction=True)
        pipe.set(self.keys.entry(name), json.dumps(info), px=max(1, int(ttl_s * 1000)))
        pipe.sadd(self.keys.names, name)
        seen = json.dumps({"node": name, "at": info.get("last_seen", time.time())})
        served = {}
        for m in info.get("models") or ():
            if m.get("name") and m.get("serving"):
                served[m["name"]] = served[_model_field(m["name"], m.get("version"))] = seen
        if served:
            pipe.hset(self.keys.models, mapping=served)
        pipe.execute()

    def last_served(self, model: str, version: str = "") -> dict | None:
        """Which node served `model` (that version of it, if named) last, and when (a
        Unix time); None: never heard of."""
        raw = self.db.hget(self.keys.models, _model_field(model, version) if version else model)
        try:
            found = json.loads(raw) if raw else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def withdraw(self, name: str) -> None:
        """Remove a node's entry at once (a clean stop)."""
        pipe = self.db.pipeline(transaction=True)
        pipe.delete(self.keys.entry(name))
        pipe.srem(self.keys.names, name)
        pipe.execute()

    def nodes(self) -> list[dict]:
        """The live nodes' entries, sorted by name."""
        found = []
        for raw in self._live(keys=[self.keys.names], args=[self.keys.entry_prefix]):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # not ours to interpret: another release's, or damaged
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                found.append(entry)
        return sorted(found, key=lambda e: e["name"])


def _model_field(name: str, version) -> str:
    return f"{name}\n{version or ''}"


def reachable(bind: str, advertise: str) -> str:
    """The address others reach a door at, from the door's bind address ("host:port")."""
    if not bind:
        return ""
    host, _, port = bind.rpartition(":")
    if advertise:
        host = advertise
    elif host.strip("[]") in ("", "0.0.0.0", "::"):
        host = socket.gethostname()  # every interface: the host name says which box
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class Announcer:
    """The node daemon's side: what it announces, every third of the TTL, until it stops."""

    def __init__(self, node):
        self.node = node
        settings = node.settings
        self.ttl_s = float(settings["fleet.node_ttl_s"])
        self.registry = NodeRegistry(node.db, FleetKeys(node.keys.prefix))
        self.started_at = time.time()
        advertise = settings["fleet.advertise_host"]
        scheme = "https" if settings["tls.cert"] else "http"
        self.doors = {
            "rest": f"{scheme}://" + reachable(f"{settings['http.host']}:{settings['http.port']}",
                                               advertise),
            "grpc": reachable(settings["grpc.address"], advertise),
            "oip_grpc": reachable(settings["oip.grpc_address"], advertise),
        }
        self._types: list[str] | None = None  # None until the framework probe has answered
        self._resources: dict = {}
        self._measured = -1e9

    def run(self) -> None:
        """The heartbeat thread; ends when the node stops (its `stopping` event)."""
        threading.Thread(target=self._probe, name="fleet-probe", daemon=True).start()
        stopping = self.node.stopping
        complaint = ""
        next_tidy = time.monotonic() + TIDY_EVERY_S
        while not stopping.is_set():
            try:
                info = self.info()
                self.registry.announce(info, self.ttl_s)
                complaint = ""
                if time.monotonic() >= next_tidy:
                    next_tidy = time.monotonic() + TIDY_EVERY_S
                    self.tidy_consumers({m["fullhash"] for m in info["models"]})
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.node.outage.failed(exc)  # the command loop notices it coming back
            except Exception as exc:  # never the end of the heartbeat: the next beat tries again
                # Said once, not every beat (a redis refusing the fleet keys would say it
                # every few seconds).
                if f"{type(exc).__name__}: {exc}" != complaint:
                    complaint = f"{type(exc).__name__}: {exc}"
                    log.error("cannot announce this node to the fleet registry: %s", complaint)
            stopping.wait(self.ttl_s / 3)

    def withdraw(self) -> None:
        self.registry.withdraw(self.node.name)

    def tidy_consumers(self, fullhashes, idle_ms: float | None = None) -> list[str]:
        """Forget the consumers that nodes gone from the fleet left in the groups of the
        streams this node reads, once they hold no job (the jobs they held are claimed
        first: `worker.claim_idle_ms`); returns their names. Nothing depends on it: a
        group only grows without it."""
        live = {n["name"] for n in self.registry.nodes()} | {self.node.name}
        idle_ms = 2 * self.ttl_s * 1000 if idle_ms is None else idle_ms
        gone = []
        for fullhash in sorted(fullhashes):
            for key in self.node.broker.streams(fullhash).values():
                try:
                    consumers = self.node.db.xinfo_consumers(key, brk.GROUP)
                except redis.ResponseError:  # no such stream or group
                    continue
                for consumer in consumers:
                    name = consumer["name"]
                    name = name.decode() if isinstance(name, bytes) else name
                    owner = name.rsplit(".", 3)[0] if name.count(".") >= 3 else ""
                    # "<node>.<bid>.<gen>.<index>": a node's worker; anything else is not ours
                    if owner and owner not in live and not consumer["pending"] \
                            and consumer["idle"] >= idle_ms:
                        self.node.db.xgroup_delconsumer(key, brk.GROUP, name)
                        gone.append(name)
        if gone:
            log.info("forgot %d consumer(s) of nodes gone from the fleet: %s", len(gone),
                     ", ".join(gone))
        return gone

    def _probe(self) -> None:
        # Blocks until every framework's probe (a child process each) has answered:
        # in a thread of its own, so the node is listed meanwhile.
        from aiserving.backends import supported_types

        self._types = supported_types()

    def info(self) -> dict:
        node = self.node
        now = time.monotonic()
        if now - self._measured >= RESOURCES_EVERY_S:
            self._resources = node_resources(node.settings.storage)
            self._measured = now
        with node.lock:
            records = [e.public() for e in node.backends.values()]
        models = []
        for record in records:
            model = record.get("model")
            if not model:
                continue
            models.append({"bid": record["bid"],
                           "fullhash": f"{model['implhash']}-{model['version']}",
                           "name": model.get("name") or "", "version": model["version"],
                           "impl": record["impl"], "status": record["switch"]["status"],
                           "serving": record.get("serving") or "",
                           # what another node's front needs to send this model work
                           "route": brk.route_of(record)})
        return {
            "name": node.name, "version": aiserving.__version__, "addresses": dict(self.doors),
            "backend_types": self._types, "models": models,
            "resources": dict(self._resources), "load": self._load(models),
            "started_at": self.started_at, "last_seen": time.time(), "ttl_s": self.ttl_s,
        }

    def _load(self, models: list[dict]) -> dict:
        """Per model: jobs queued (waiting or in flight) in the streams this node reads
        (the model's, its own, its shared folders') and the jobs this node's processes
        hold; and this node's total."""
        streams = sorted({m["fullhash"] for m in models})
        pipe = self.node.db.pipeline(transaction=False)
        for fullhash in streams:
            for key in self.node.broker.streams(fullhash).values():  # shared, own, folders'
                pipe.xlen(key)
                pipe.xpending(key, brk.GROUP)
        answers = iter(pipe.execute(raise_on_error=False))
        mine = f"{self.node.name}."  # consumers are "<node>.<bid>.<gen>.<index>"
        queues, total = [], 0
        for fullhash in streams:
            depth = held = 0
            for _ in self.node.broker.tags:
                length, pending = next(answers), next(answers)
                depth += length if isinstance(length, int) else 0
                if isinstance(pending, dict):  # no group yet: an error, nothing held
                    for consumer in pending.get("consumers") or ():
                        name = consumer["name"]
                        name = name.decode() if isinstance(name, bytes) else name
                        if name.startswith(mine):
                            held += int(consumer["pending"])
            total += held
            queues.append({"fullhash": fullhash, "depth": depth, "in_flight": held})
        return {"queues": queues, "in_flight": total}

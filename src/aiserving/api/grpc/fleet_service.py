"""gRPC `aiserving.fleet.v1.Fleet`: the fleet registry, as GET /api/v1alpha/nodes reads it."""

from __future__ import annotations

from aiserving.api.grpc.mapping import answer
from aiserving.errors import ConfigError
from aiserving.node.fleet import FleetKeys, NodeRegistry

try:
    from aiserving.api.grpc.generated import fleet_pb2, fleet_pb2_grpc
except ImportError as exc:  # a source checkout where scripts/setup.sh has not run
    raise ConfigError(f"The gRPC modules are not generated ({exc}): run `bash scripts/setup.sh` "
                      "or `python scripts/gen_protos.py`.") from None


class FleetService(fleet_pb2_grpc.FleetServicer):
    def __init__(self, node):
        self.registry = NodeRegistry(node.db, FleetKeys(node.keys.prefix))

    def ListNodes(self, request, context):
        return answer(context, lambda: fleet_pb2.ListNodesReply(
            nodes=[node_message(n) for n in self.registry.nodes()]))


def node_message(entry: dict) -> "fleet_pb2.Node":
    """A registry entry as a message; what an entry lacks (another release's) stays empty."""
    load = entry.get("load") or {}
    types = entry.get("backend_types")
    return fleet_pb2.Node(
        name=entry["name"], version=str(entry.get("version") or ""),
        addresses=fleet_pb2.Addresses(**_strings(entry.get("addresses"),
                                                 ("rest", "grpc", "oip_grpc"))),
        backend_types=[str(t) for t in types or ()], backend_types_known=types is not None,
        models=[fleet_pb2.Model(**_strings(m, ("bid", "fullhash", "name", "version", "impl",
                                               "status", "serving")))
                for m in entry.get("models") or ()],
        resources=fleet_pb2.Resources(**_strings(entry.get("resources"),
                                                 ("cpu", "mem", "gpu", "dsk"))),
        queues=[fleet_pb2.Queue(fullhash=str(q.get("fullhash") or ""),
                                depth=int(q.get("depth") or 0),
                                in_flight=int(q.get("in_flight") or 0))
                for q in load.get("queues") or ()],
        in_flight=int(load.get("in_flight") or 0),
        started_at=float(entry.get("started_at") or 0),
        last_seen=float(entry.get("last_seen") or 0),
        ttl_s=float(entry.get("ttl_s") or 0))


def _strings(source, fields) -> dict:
    source = source if isinstance(source, dict) else {}
    return {f: str(source.get(f) or "") for f in fields}

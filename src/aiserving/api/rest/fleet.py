"""`GET /api/v1alpha/nodes`: the nodes sharing this node's redis, from the fleet registry.

Guarded like the rest of the API (the front's `before_request`); redis errors
become the front's 503 like any other call's.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from aiserving.broker import broker as brk
from aiserving.node.fleet import FleetKeys, NodeRegistry

PATH = "/api/v1alpha/nodes"


def blueprint(broker: brk.Broker) -> Blueprint:
    bp = Blueprint("fleet", __name__)
    registry = NodeRegistry(broker.db, FleetKeys(broker.keys.prefix))

    @bp.get(PATH)
    def nodes():
        return Response(json.dumps({"status": "success", "nodes": registry.nodes()}), 200,
                        mimetype="application/json")

    return bp

"""The Open Inference Protocol request path its REST and gRPC doors share.

A model is a loaded JSM bundle: its record's `name`, its `version`. The doors
find it among the routes the node publishes (from the cache `Broker.route_table`
keeps, checked at enqueue like every route), check the request against the
tensors its worker described at load, queue it on the model's stream as the
legacy doors do, and wait for the reply.

A model this node does not serve may be served by another node of its fleet (the
same redis and key prefix): the registry's entries carry each model's route, and
a job queued on that model's stream is taken by that node's workers, whose reply
comes back to this process's reply list. A model no live node serves is refused at
once, never queued where nobody reads.

Two forms of infer: raw tensors, fed to the framework as given (the bundle's
pre/post-processing skipped), answered as named tensors; or one BYTES input
holding an encoded image, run through the bundle like `/detect`, answered as
one BYTES output holding the post-processing result's JSON text.
"""

from __future__ import annotations

import random
import threading
import time

from aiserving import metrics
from aiserving.broker import broker as brk
from aiserving.jobs import tensors as oip
from aiserving.errors import (AiservingError, InputError, ModelNotFound, NotReady,
                              RequestTimeout)
from aiserving.api.intake import ask
from aiserving.jobs.inputs import check_image_bytes
from aiserving.node.fleet import FleetKeys, NodeRegistry

_FLEET_CACHE_S = 1.0  # how stale this process's copy of the fleet's routes may be
EXTENSIONS = ["binary_tensor_data"]


def _version_key(version: str):
    return (version.isdigit(), int(version) if version.isdigit() else 0, version)


def _ago(at) -> str:
    try:
        seconds = max(0, int(time.time() - float(at)))
    except (TypeError, ValueError):
        return "some time ago"
    return f"{seconds} s ago"


def _serves(route: dict, name: str, version: str) -> bool:
    info = route.get("oip") or {}
    return bool(route.get("serving")) and info.get("name") == name and (
        not version or info.get("version") == version)


def _newest(hits: list[dict]) -> dict:
    """One of the routes serving the newest version (several backends share its work)."""
    newest = max((r["oip"]["version"] for r in hits), key=_version_key)
    return random.choice([r for r in hits if r["oip"]["version"] == newest])


class OipDoor:
    def __init__(self, broker: brk.Broker, settings, door: str, waiting=None):
        self.broker = broker
        self.door = door  # the metrics label: "oip-rest" or "oip-grpc"
        self.timeout = float(settings["request.timeout_s"])
        self.max_image = settings["request.max_image_bytes"]
        self.waiting = waiting  # the REST front's per-model bound of waiting requests
        # The broker's route cache is three attributes: threads (the daemon's gRPC door)
        # read and refresh them together, so a version never vouches for older routes.
        self._lock = threading.Lock()
        self.registry = NodeRegistry(broker.db, FleetKeys(broker.keys.prefix))
        self._fleet: tuple[float, list[dict]] = (-1e9, [])

    def _routes(self, fresh: bool) -> tuple[list[dict], str]:
        with self._lock:
            return self.broker.route_table(fresh)

    def _fleet_routes(self, fresh: bool) -> list[dict]:
        """Routes of the models the other live nodes serve, from the registry."""
        at, routes = self._fleet
        if fresh or time.monotonic() - at > _FLEET_CACHE_S:
            me = self.broker.keys.node
            routes = [m["route"] for n in self.registry.nodes() if n["name"] != me
                      for m in n.get("models") or () if m.get("route")]
            self._fleet = (time.monotonic(), routes)
        return routes

    # --- finding a model ----------------------------------------------------------------

    def find(self, name: str, version: str = "", fresh: bool = False) -> tuple[dict, str]:
        """The route of a backend serving the model (the newest version unless one is
        named; any of several backends serving it), and the routes' version."""
        if not isinstance(name, str) or not name:
            raise InputError("a model name is required")
        for refresh in ([True] if fresh else [False, True]):
            routes, routes_version = self._routes(refresh)
            hits = [r for r in routes if _serves(r, name, version)]
            if hits:
                return _newest(hits), routes_version
        remote = self._fleet_routes(fresh)
        hits = [r for r in remote if _serves(r, name, version)]
        if hits:
            # Another node's route: no version of ours vouches for it (an empty one
            # skips the check at enqueue); the registry's TTL drops a dead node's.
            return _newest(hits), ""
        shown = f"model {name!r}" + (f" version {version!r}" if version else "")
        loading = [r for r in routes + remote if (r.get("model") or {}).get("name") == name
                   and (not version or r["model"].get("version") == version)]
        if loading:
            raise NotReady(f"{shown} is not ready on any live node (status: "
                           f"{loading[0]['switch']['status']}); retry shortly")
        if routes_version == "0" and self.broker.republishing:
            # Redis came back empty: this node's models are not listed again yet. They
            # may be this very model: never a 404 for that.
            raise NotReady(brk.REPUBLISHING)
        last = self.registry.last_served(name, version)
        if last is not None:  # its nodes are gone (or unloaded it): may come back, so 503
            raise NotReady(f"{shown} is served by no live node now; it was last served by "
                           f"node {last.get('node')!r} {_ago(last.get('at'))}")
        raise ModelNotFound(f"{shown} is served by no live node (neither this one nor "
                            "another sharing its redis)")

    def server_ready(self) -> bool:
        if not self.broker.node_alive():
            return False
        routes, _ = self._routes(True)
        return any(r.get("serving") and r.get("oip") for r in routes)

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when it serves; False while it loads; ModelNotFound when it is unknown."""
        try:
            self.find(name, version, fresh=True)  # no cached route vouches for readiness
        except NotReady:
            return False
        return True

    def metadata(self, name: str, version: str = "") -> dict:
        route, _ = self.find(name, version, fresh=True)
        routes, _ = self._routes(False)
        versions = sorted({r["oip"]["version"] for r in routes if _serves(r, name, "")}
                          | {route["oip"]["version"]}, key=_version_key)
        info = route["oip"]
        return oip.metadata(name, versions, info.get("impl") or "", info.get("tensors"))

    # --- infer --------------------------------------------------------------------------

    def infer(self, name: str, version: str, inputs: list[oip.Tensor],
              outputs: list[str] | None) -> tuple[str, list[oip.Tensor]]:
        """Run one request; returns the model version that answered and the outputs."""
        t0, model, outcome = time.perf_counter(), "", "ok"
        metrics.in_flight().inc()
        try:
            image_form = False

            def plan(fresh: bool):
                nonlocal model, image_form
                route, routes_version = self.find(name, version, fresh=fresh)
                model = route["serving"]
                job, image_form = self._job(name, route, inputs, outputs)
                return route, routes_version, job

            route, _, reply = ask(self.broker, plan, self.timeout, self.waiting)
            if reply is None:
                raise RequestTimeout(f"no result within {self.timeout:.0f} s")
            return route["oip"]["version"], self._answer(name, reply, outputs, image_form)
        except AiservingError as exc:
            outcome = str(exc.code)
            raise
        finally:
            metrics.in_flight().dec()
            metrics.requests().labels(self.door, model, outcome).inc()
            metrics.request_seconds().labels(self.door, model).observe(time.perf_counter() - t0)

    def _job(self, name: str, route: dict, inputs: list[oip.Tensor],
             outputs: list[str] | None) -> tuple[dict, bool]:
        if not inputs:
            raise InputError("the request has no inputs")
        tensors = route["oip"].get("tensors")
        if oip.is_image_request(inputs, tensors):
            if outputs and len(outputs) > 1:
                raise InputError("the image form answers one output (the post-processing "
                                 f"result); {len(outputs)} were requested")
            image = oip.image_of(inputs[0])
            return {"image": image, "kind": check_image_bytes(image, route, self.max_image)}, True
        if not tensors or not tensors.get("inputs"):
            raise InputError(f"the tensors of model {name!r} are not known (see the node's "
                             "log): only the image form (one BYTES input) is served")
        ordered = oip.check_inputs(inputs, tensors, name)
        known = [o["name"] for o in tensors.get("outputs") or []]
        for wanted in outputs or []:
            if wanted not in known:
                raise InputError(f"model {name!r} has no output {wanted!r}; its outputs are: "
                                 f"{', '.join(known)}")
        return {"tensors": oip.pack(ordered)}, False

    @staticmethod
    def _answer(name: str, reply: bytes, outputs: list[str] | None,
                image_form: bool) -> list[oip.Tensor]:
        kind = reply[:1]  # an error reply was raised by `ask`
        if image_form:
            if kind != b"R":
                raise AiservingError("the worker answered the image form with tensors")
            out = outputs[0] if outputs else oip.IMAGE_OUTPUT
            return [oip.Tensor(out, "BYTES", [1], oip.join_bytes([reply[1:]]))]
        if kind != b"T":
            raise AiservingError("the worker answered a tensor request with a result")
        return oip.pick_outputs(oip.decode_reply(reply), outputs, name)

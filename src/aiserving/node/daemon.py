"""The node daemon: backend registry, model lifecycle, worker supervision.

The node is the single writer of backend state. It publishes every backend
as JSON in redis (`NodeKeys.backends`) so every REST front worker can read
it, and takes commands from the REST front on a redis list; the gRPC
servicers call the same methods directly. Both doors lead to one set of
operations: `create_backend`, `load_model`, `switch`, `terminate_backend`.

Each backend and the generations of processes serving it are kept in
`lifecycle.py`; the node owns them. Its supervision loop (`supervisor.supervise`)
watches their processes and answers what a stuck one held; what it runs is kept in
the saved state (`saved_state.py`) and restored from it at start.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import threading
import time
from pathlib import Path


from aiserving.backends import REGISTRY, probed_types, supported_types
from aiserving.broker import broker as brk
from aiserving.broker.publication import Publication
from aiserving.bundle.store import Bundle, BundleStore
from aiserving.config import Settings
from aiserving.errors import (AiservingError, BackendLimit, BackendNotFound, BackendRunning,
                              BadRequest, ModelLoadFailed, TooManyBackends, UnsupportedBackend)
from aiserving.jobs.inputs import limit_pixels
from aiserving.node.commands import CommandDesk
from aiserving.node.fleet import Announcer
from aiserving.node.lifecycle import (LEGACY_MAX_PROCESSES, BackendEntry, Generation,
                                      auto_processes)
from aiserving.node.saved_state import SavedState, restore, to_save
from aiserving.node.spawner import Spawner
from aiserving.node.supervisor import supervise
from aiserving.status import BackendState

log = logging.getLogger(__name__)

MAX_BATCHSIZE = 1000
MAX_INFERPROCNUM = LEGACY_MAX_PROCESSES
#: the setting that names a framework's default device (what a backend runs on when
#: its request names none)
_DEVICE_SETTING = {"pytorch": "be.trpy.device", "tensorflow": "be.tf.device",
                   "mxnet": "be.mxnet.device"}


class Node:
    def __init__(self, settings: Settings, redis_url: str):
        self.settings = settings
        self.redis_url = redis_url
        self.name = settings["node.name"]
        self.store = BundleStore(settings.storage)
        self.db = brk.connect(redis_url)
        # Queueing for the gRPC Inference service, the same path the REST front takes.
        self.broker = brk.Broker(redis_url, self.name, queue_max=settings["queue.max_len"],
                                 inline_max=settings["queue.max_inline_bytes"],
                                 result_ttl=settings["result.ttl_s"],
                                 prefix=settings["redis.key_prefix"],
                                 shared_inputs=settings["fleet.shared_inputs"])
        self.keys = self.broker.keys
        self.spawner = Spawner(mp.get_context("spawn"), settings, redis_url, self.name)
        self.lock = threading.RLock()
        self.backends: dict[str, BackendEntry] = {}
        self.orphans: list[Generation] = []  # generations of terminated backends, draining
        self._next_bid = 0
        self.rest_bid: str | None = None  # the backend legacy REST calls go to
        self.saved = SavedState(settings.storage)
        self._next_gen = 0
        self.stopping = threading.Event()
        self.outage = brk.Outage("node")
        self.publication = Publication(self.db, self.keys, self.outage)
        self.fleet = Announcer(self)  # this node's entry in the fleet registry
        self._threads: list[threading.Thread] = []
        self.preheat = settings["preheat"] or str(_default_preheat(settings.storage / "run"))
        limit_pixels(settings["request.max_pixels"])  # the gRPC Inference service checks here

    # --- life ---------------------------------------------------------------------

    def start(self) -> None:
        # Probe the frameworks now (each in a child process) rather than on the first request.
        threading.Thread(target=supported_types, name="probe", daemon=True).start()
        # Inline inputs left by a node that did not stop cleanly: no job will read them.
        shutil.rmtree(self.settings.storage / "run" / "tmp", ignore_errors=True)
        # Batch caps measured by the last run: this one measures afresh.
        for stale in (self.settings.storage / "run").glob("tune-*.json"):
            stale.unlink(missing_ok=True)
        self.db.delete(self.keys.backends, self.keys.routes, self.keys.rest_bid,
                       self.keys.commands)
        self.db.set(self.keys.alive, "1", ex=5)
        for target, name in ((lambda: supervise(self), "supervisor"), (CommandDesk(self).run, "commands"),
                             (self.fleet.run, "fleet")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, drain_s: float = 20.0) -> None:
        """Stop every inference process (each drains its queue first), then the threads."""
        with self.lock:
            self.saved.enabled = False
            for entry in self.backends.values():
                entry.state = BackendState.EXITING
                for gen in entry.generations():
                    gen.stop()
            self.publish()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and not self._all_finished():
            time.sleep(0.1)
        with self.lock:
            for gen in self.all_generations():
                for p in gen.procs:
                    p.kill()
        self.stopping.set()
        for thread in self._threads:
            thread.join(5)
        for gen in self.all_generations():
            for p in gen.procs:
                p.reap(time.monotonic())
        try:
            self.db.delete(self.keys.backends, self.keys.routes, self.keys.rest_bid,
                           self.keys.alive)
            self.db.incr(self.keys.version)
            self.fleet.withdraw()
        except Exception:
            pass

    # --- operations (REST and gRPC doors) -------------------------------------------

    def create_backend(self, impl: str, batchsize: int = 0, inferprocnum: int = 0,
                       device: str = "", preheat: str = "", bid: str = "") -> str:
        """A new backend; `bid` only when restoring one a previous run had."""
        type_name = impl.split(".", 1)[0]
        if not type_name:
            raise BadRequest("a backend type is required to create a backend")
        known = probed_types()
        if known is None:
            # The framework probe still runs (just after start): a known type is taken at
            # once rather than making the caller wait for it; should its framework not
            # import, the load fails with the reason (GET /switch, ListBackend).
            if type_name not in REGISTRY:
                raise UnsupportedBackend(f"unknown backend type {type_name!r}; this node knows "
                                         f"{', '.join(sorted(REGISTRY))}")
        elif type_name not in known:
            raise UnsupportedBackend(f"backend type {type_name!r} is not supported on this node "
                                     f"(supported: {', '.join(known) or 'none'})")
        batchsize, resolved = self._limits(
            batchsize, inferprocnum,
            device or (self.settings[_DEVICE_SETTING[type_name]]
                       if type_name in _DEVICE_SETTING else ""))
        with self.lock:
            if len(self.backends) >= self.settings["backend.max_count"]:
                raise TooManyBackends(f"this node already runs {len(self.backends)} backends "
                                      f"(backend.max_count)")
            if not bid:
                bid = str(self._next_bid)
            self._next_bid = max(self._next_bid, int(bid) + 1 if bid.isdigit() else 0)
            # Nobody chose how many processes: each model gets as many as it needs.
            auto_sized = not inferprocnum and not self.settings["backend.inferprocnum"]
            self.backends[bid] = BackendEntry(bid, impl, batchsize, resolved, device,
                                              preheat or self.preheat, auto_sized)
            self.publish()
        log.info("created backend %s (%s, batchsize %d, %s%d process(es))", bid, impl, batchsize,
                 "up to " if auto_sized and resolved > 1 else "", resolved)
        return bid

    def _limits(self, batchsize: int, inferprocnum: int, device: str = "") -> tuple[int, int]:
        """The backend settings to use (0: the node's default), refused when out of limits."""
        batchsize = batchsize or self.settings["batch.size"]
        inferprocnum = inferprocnum or self.settings["backend.inferprocnum"] or \
            auto_processes(device or "")
        if not 1 <= batchsize <= MAX_BATCHSIZE:
            raise BackendLimit(f"batchsize {batchsize} is out of limits (1..{MAX_BATCHSIZE})")
        if not 1 <= inferprocnum <= MAX_INFERPROCNUM:
            raise BackendLimit(f"inferprocnum {inferprocnum} is out of limits (1..{MAX_INFERPROCNUM})")
        return batchsize, inferprocnum

    def load_model(self, bid: str, bundle: Bundle) -> None:
        """Start loading `bundle` on a backend; returns at once."""
        with self.lock:
            entry = self._entry(bid)
            if bundle.record.backend_type != entry.type_name:
                raise BadRequest(f"model {bundle.fullhash} is a {bundle.record.impl} bundle; "
                                 f"backend {bid} runs {entry.type_name}")
            if entry.current is not None and entry.current is not entry.serving:
                # A load still in progress (or failed) is superseded by this one.
                entry.current.stop()
                entry.retired.append(entry.current)
            self._next_gen += 1
            gen_no = self._next_gen
            entry.awaiting = None  # a load replaces what the last run could not bring back
            entry.current = self.spawner.generation(entry, bundle, gen_no)
            entry.state, entry.msg = BackendState.LOADING, ""
            self.publish()
        log.info("backend %s: loading %s (%s)", bid, bundle.fullhash, bundle.record.name)

    def switch(self, bid: str = "", btype: str = "", model: str = "", mode: str = "",
               device: str = "", secret: bytes | None = None) -> str:
        """Legacy REST `/switch`: (create a backend and) load a model; returns the bid.

        `secret`: the key of an encrypted model (`crypto.legacy_key`)."""
        if not model:
            raise BadRequest("field 'model' is required")
        bundle = self.store.resolve(model).with_secret(secret)
        record = bundle.record
        if btype and btype != record.backend_type:
            raise BadRequest(f"model {model!r} is a {record.impl} bundle, not {btype}")
        if mode and mode != record.model_type:
            raise BadRequest(f"model {model!r} is a {record.impl} bundle, not mode {mode!r}")
        if not bid and not btype:
            raise BadRequest("field 'btype' is required to create a new backend")
        if bid:
            self.load_model(bid, bundle)
        elif self._rest_already(bundle, device):
            # The same /switch again (a client retrying after a time-out, or asking twice):
            # the REST backend loads or runs that model already; a second one would only
            # take memory.
            return self.rest_bid
        else:
            bid = self.create_backend(record.impl, device=device)
            try:
                self.load_model(bid, bundle)
            except AiservingError:
                self.terminate_backend(bid)
                raise
        with self.lock:
            self.rest_bid = bid
            self.db.set(self.keys.rest_bid, bid)
            self.publish()
        return bid

    def _rest_already(self, bundle: Bundle, device: str) -> bool:
        """Whether the REST door's backend loads or serves `bundle` already, on `device`."""
        with self.lock:
            entry = self.backends.get(self.rest_bid or "")
            if entry is None or entry.state == BackendState.EXITING:
                return False
            gen = entry.current
            return (gen is not None and not gen.failed and gen.bundle.fullhash == bundle.fullhash
                    and entry.impl == bundle.record.impl and (not device or device == entry.device))

    def create_and_load(self, impl: str, bundle: Bundle, *, batchsize: int = 0,
                        inferprocnum: int = 0, device: str = "", preheat: str = "",
                        timeout: float = 300.0) -> str:
        """gRPC CreateAndLoadModel: a new backend running `bundle`, or nothing.

        An identical backend (same impl and model version) already there answers
        BackendRunning with its bid. Waits until the model runs; if it fails to, the
        backend this call created is removed again.
        """
        self._limits(batchsize, inferprocnum)
        if impl != bundle.record.impl:
            raise BadRequest(f"backend impl {impl!r} does not match the model's impl "
                             f"{bundle.record.impl!r}")
        with self.lock:
            for entry in self.backends.values():
                cur = entry.current
                if (entry.impl == impl and cur is not None and cur.bundle.fullhash == bundle.fullhash
                        and not cur.failed and entry.state != BackendState.EXITING):
                    raise BackendRunning(entry.bid)
            bid = self.create_backend(impl, batchsize, inferprocnum, device, preheat)
        try:
            self.load_model(bid, bundle)
            self.wait_running(bid, timeout)
        except AiservingError:
            self.terminate_backend(bid)
            raise
        return bid

    def wait_running(self, bid: str, timeout: float) -> None:
        """Block until the backend's newest model runs; raise its error if it fails."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                entry = self._entry(bid)
                cur = entry.current
                if cur is not None and cur is entry.serving and cur.running:
                    return
                if cur is None or cur.failed:
                    raise ModelLoadFailed(f"backend {bid} failed to load "
                                          f"{cur.bundle.fullhash if cur else 'a model'}: "
                                          f"{cur.error if cur else entry.msg}")
            if time.monotonic() >= deadline:
                raise ModelLoadFailed(f"backend {bid} did not finish loading within {timeout:.0f} s")
            time.sleep(0.05)

    def users_of(self, implhash: str, version: str) -> list[str]:
        """Bids of the backends loading or serving this model version."""
        fullhash = f"{implhash}-{version}"
        with self.lock:
            return [e.bid for e in self.backends.values()
                    if any(g.bundle.fullhash == fullhash and not g.finished
                           for g in e.generations())]

    def terminate_backend(self, bid: str) -> None:
        with self.lock:
            entry = self._entry(bid)
            entry.state = BackendState.EXITING
            for gen in entry.generations():
                gen.stop()
                self.orphans.append(gen)
            del self.backends[bid]
            self.publish()
        with self.lock:
            if self.rest_bid == bid:
                self.rest_bid = None
                self.db.delete(self.keys.rest_bid)
                self.publish()
        log.info("terminated backend %s", bid)

    def backend(self, bid: str) -> dict:
        with self.lock:
            return self._entry(bid).public()

    def all_backends(self) -> list[dict]:
        with self.lock:
            return [e.public() for e in self.backends.values()]

    # --- internals ------------------------------------------------------------------

    def _entry(self, bid: str) -> BackendEntry:
        entry = self.backends.get(str(bid))
        if entry is None:
            raise BackendNotFound(f"no backend {bid!r} on this node")
        return entry

    def all_generations(self) -> list[Generation]:
        with self.lock:
            gens = [g for e in self.backends.values() for g in e.generations()]
            return gens + self.orphans

    def _all_finished(self) -> bool:
        with self.lock:
            for gen in self.all_generations():
                for p in gen.procs:
                    p.pump()
                    p.reap(time.monotonic())
            return all(g.finished for g in self.all_generations())

    def restore(self) -> set[str]:
        """Bring back the backends of the previous run (`saved_state.restore`)."""
        return restore(self)

    def republish(self) -> None:
        """Publish every backend's state again: redis may have come back empty."""
        with self.lock:
            self.publication.forget()
            self.publish()

    def publish(self) -> None:
        """Save and publish the backends' state (called with the lock held)."""
        self.saved.save(to_save(self.backends.values(), self.preheat), self.rest_bid)
        self.publication.publish({bid: e.public() for bid, e in self.backends.items()},
                                 self.rest_bid)


def _default_preheat(run_dir: Path) -> Path:
    """A plain grey JPEG, made once, for bundles to warm up on."""
    path = run_dir / "preheat.jpg"
    if not path.exists():
        from PIL import Image

        run_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (224, 224), (128, 128, 128)).save(path, "JPEG")
    return path

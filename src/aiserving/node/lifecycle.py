"""A backend on this node: its settings, its state, and the generations of
inference processes serving its models.

A load starts a new generation beside the one serving; traffic moves to it only
when all its processes run, then the old one drains and exits. A failed load
leaves the old model serving. The node holds its lock around every use.
"""

from __future__ import annotations

import logging
import os

from aiserving.bundle.store import Bundle
from aiserving.inference.batching import processes_for
from aiserving.node.supervisor import WorkerProcess
from aiserving.status import SWITCH_WORDS, BackendState, ProcStatus

log = logging.getLogger("aiserving.node")

_FAILED = (ProcStatus.ERROR, ProcStatus.LABEL_ERROR)
LEGACY_MAX_PROCESSES = 2  # inferprocnum above 2 is a limit error (contract)


def auto_processes(device: str) -> int:
    """Inference processes per backend when nobody chose: one per core, within the
    legacy limit; one on a GPU (a second copy of the model would only share it)."""
    device = device.lower()
    if device.startswith(("cuda", "gpu")) or device == "auto" and _has_gpu():
        return 1
    return max(1, min(LEGACY_MAX_PROCESSES, os.cpu_count() or 1))


def _has_gpu() -> bool:
    # What "auto" picks, told without importing a framework: an NVIDIA device node
    # (a discrete GPU, or a Jetson's integrated one).
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu"))


def auto_threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, processes))


class Generation:
    """The inference processes of one backend serving one model version."""

    def __init__(self, number: int, bundle: Bundle, procs: list[WorkerProcess],
                 sized: bool = True):
        self.number = number
        self.bundle = bundle
        self.procs = procs
        # False while its first process measures the model: the node then starts as
        # many more as the measurement calls for (Spawner.grow).
        self.sized = sized

    @property
    def failed(self) -> bool:
        # A process that reported an error is failed already, before it has exited.
        return any(p.failed or p.status in _FAILED for p in self.procs)

    @property
    def running(self) -> bool:
        return self.sized and all(p.status == ProcStatus.RUNNING for p in self.procs)

    @property
    def finished(self) -> bool:
        return all(p.finished for p in self.procs)

    @property
    def error(self) -> str:
        msg = next((p.msg for p in self.procs if (p.failed or p.status in _FAILED) and p.msg), "")
        if msg and self.bundle.encrypted:
            # AES-CBC cannot tell a wrong key: it yields bytes the framework refuses, or
            # even crashes on, so whatever the failure, the key is the first suspect.
            msg += (" (the model is encrypted: a wrong a64key or pvtkey gives a model_core no "
                    "framework can read)")
        return msg

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


class BackendEntry:
    def __init__(self, bid: str, impl: str, batchsize: int, inferprocnum: int, device: str,
                 preheat: str, auto_sized: bool = False):
        self.bid = bid
        self.preheat = preheat
        self.impl = impl
        self.batchsize = batchsize
        self.inferprocnum = inferprocnum  # the most processes; fewer if auto_sized
        # Nobody chose the process count: each model gets as many as it measures to need.
        self.auto_sized = auto_sized
        self.device = device
        self.threads = 0  # CPU threads per process, as the node chose them at the last load
        self.state = BackendState.INITIALIZED
        self.msg = ""
        self.current: Generation | None = None  # the newest model asked for
        self.serving: Generation | None = None  # the one taking traffic
        self.retired: list[Generation] = []  # draining, then gone
        # A model the last run ran that could not come back (its key is needed, or it is
        # gone): kept, and saved again, until a load replaces it, so no restart forgets it.
        self.awaiting: dict | None = None  # {"model": fullhash, "name", "encrypted"}

    @property
    def type_name(self) -> str:
        return self.impl.split(".", 1)[0]

    def generations(self) -> list[Generation]:
        gens = [g for g in (self.current, self.serving) if g is not None]
        return list({id(g): g for g in gens + self.retired}.values())

    def public(self) -> dict:
        """What the node publishes; read by the REST front and the gRPC servicers."""
        gen = self.current
        status = {"state": int(self.state)}
        # Legacy clients send as soon as process "0" says running (the contract's 4): a
        # generation still starting its other processes takes no traffic yet, so its
        # running ones say preheating until it does.
        ready = gen is not None and (gen is self.serving or gen.running)
        for n, p in enumerate(gen.procs if gen else []):
            shown = p.status
            if shown == ProcStatus.RUNNING and not ready:
                shown = ProcStatus.PREHEATING
            status[str(n)] = int(shown)
        record = gen.bundle.record.to_dict() if gen else None
        # "loaded" once every process runs (the model then takes traffic); until then,
        # the first one still on its way (or failed) tells.
        lagging = next((p for p in gen.procs if p.status != ProcStatus.RUNNING),
                       gen.procs[0]) if gen else None
        if gen is not None:
            word = SWITCH_WORDS[lagging.status]
            error = (gen.error or lagging.msg) if word == "failed" else ""
        elif self.state == BackendState.ERROR:  # what gRPC's ListBackend says, REST says too
            word, error = "failed", self.msg
        else:
            word, error = "cleaning", ""
        name = record["name"] if record else (self.awaiting or {}).get("name", "")
        return {
            "bid": self.bid, "impl": self.impl, "batchsize": self.batchsize,
            "inferprocnum": self.inferprocnum, "device": self.device, "preheat": self.preheat,
            "state": int(self.state), "msg": self.msg, "status": status, "model": record,
            "serving": self.serving.bundle.fullhash if self.serving else None,
            "switch": {"model": name, "status": word, "error": error},
            "sizing": self.sizing(),
            "oip": self.oip(),
        }

    def oip(self) -> dict | None:
        """What the Open Inference Protocol doors tell of the model taking traffic."""
        gen = self.serving
        if gen is None:
            return None
        record = gen.bundle.record
        return {"name": record.name, "version": record.version, "impl": record.impl,
                "tensors": next((p.tensors for p in gen.procs if p.tensors), None)}

    def sizing(self) -> dict:
        """Processes, threads and the batch cap the preheat measured (None: not yet)."""
        gen = self.serving or self.current
        caps = [p.batch_cap for p in gen.procs if p.batch_cap] if gen else []
        overlap = [p.overlap_pre for p in gen.procs if p.overlap_pre is not None] if gen else []
        costs = [p.item_cost for p in gen.procs if p.item_cost is not None] if gen else []
        return {"processes": len(gen.procs) if gen and gen.sized else self.inferprocnum,
                "threads": self.threads, "batchsize": self.batchsize,
                "batch_cap": min(caps) if caps else None,
                "overlap_pre": any(overlap) if overlap else None,
                # what the preheat measured per item, pipeline and serving; None: not measured
                "item_ms": round(1000 * min(costs), 4) if costs else None}

    def first_measured(self) -> tuple[int, float | None] | None:
        """(processes the current generation is to have, the cost per item its first
        process measured) once that process runs, for a generation started with it
        alone; None otherwise. Asked once per generation."""
        gen = self.current
        if gen is None or gen.sized or gen.failed or gen.procs[0].status != ProcStatus.RUNNING:
            return None
        gen.sized = True
        cost = gen.procs[0].item_cost
        return (processes_for(cost, self.inferprocnum) if cost else self.inferprocnum), cost

    def advance(self) -> None:
        """Move a backend along its lifecycle after its processes changed."""
        self.retired = [g for g in self.retired if not g.finished]
        if self.state == BackendState.EXITING:
            return
        cur = self.current
        if cur is None:
            if self.state != BackendState.ERROR:  # e.g. a model that could not be restored
                self.state = BackendState.INITIALIZED
            return
        if cur.failed:
            cur.stop()
            if self.serving is cur:
                self.serving = None
            self.msg = cur.error
            if self.serving is None:
                self.state = BackendState.ERROR
            else:
                # The previous model keeps serving; the failed load is reported.
                self.state = BackendState.RUNNING
            return
        if cur is not self.serving and cur.running:
            if self.serving is not None:
                self.serving.stop()
                self.retired.append(self.serving)
            self.serving = cur
            log.info("backend %s: now serving %s", self.bid, cur.bundle.fullhash)
        if cur is self.serving:
            self.state = BackendState.RUNNING if cur.running else BackendState.LOADING
        else:
            self.state = BackendState.LOADING


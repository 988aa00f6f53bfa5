"""The inference processes of a generation: how many, and what each is told.

Where nobody chose a backend's process count, a generation starts with its first
process alone; that one measures the model at preheat (`batching.py`), and the
rest follow as the measured cost per item calls for (`batching.processes_for`).
"""

from __future__ import annotations

import base64
import logging

from aiserving.bundle.store import Bundle
from aiserving.config import Settings
from aiserving.inference.batching import processes_for
from aiserving.node.lifecycle import BackendEntry, Generation, auto_threads
from aiserving.node.supervisor import WorkerProcess

log = logging.getLogger("aiserving.node")


class Spawner:
    def __init__(self, ctx, settings: Settings, redis_url: str, node: str):
        self.ctx = ctx
        self.settings = settings
        self.redis_url = redis_url
        self.node = node
        # Seconds per item measured by a model's first process, by (model, batch size,
        # most processes, device): a model loaded again starts all it needs at once.
        self._item_costs: dict[tuple, float] = {}

    def generation(self, entry: BackendEntry, bundle: Bundle, number: int) -> Generation:
        """A new generation of `entry` for `bundle`, its processes to be started."""
        count, sized = entry.inferprocnum, True
        if entry.auto_sized and count > 1:
            known = self._item_costs.get(_cost_key(entry, bundle))
            count, sized = (processes_for(known, count), True) if known else (1, False)
        return Generation(number, bundle, [self._process(entry, bundle, number, n)
                                           for n in range(count)], sized)

    def grow(self, entry: BackendEntry) -> None:
        """Add the rest of the current generation's processes once its first measured
        the model (called with the node's lock held, after each status change)."""
        sized = entry.first_measured()
        if sized is None:
            return
        count, cost = sized
        gen = entry.current
        if cost:
            self._item_costs[_cost_key(entry, gen.bundle)] = cost
        gen.procs += [self._process(entry, gen.bundle, gen.number, n) for n in range(1, count)]
        log.info("backend %s: %s; %d inference process(es) of up to %d", entry.bid,
                 f"{1000 * cost:.3f} ms per item measured" if cost else "cost not measured",
                 count, entry.inferprocnum)

    def _process(self, entry: BackendEntry, bundle: Bundle, gen: int, index: int) -> WorkerProcess:
        return WorkerProcess(self.ctx, self._spec(entry, bundle, gen, index),
                             self.settings["worker.restart_limit"])

    def _spec(self, entry: BackendEntry, bundle: Bundle, gen: int, index: int) -> dict:
        values = self.settings.as_dict()
        # The cores shared out among the backend's processes, unless a setting chose.
        key = "be.trpy.threads" if entry.type_name == "pytorch" else "backend.threads"
        entry.threads = values[key] = values[key] or auto_threads(entry.inferprocnum)
        return {
            "settings": values, "redis_url": self.redis_url, "node": self.node,
            "bid": entry.bid, "gen": gen, "index": index,
            "consumer": f"{self.node}.{entry.bid}.{gen}.{index}",
            "implhash": bundle.record.implhash, "version": bundle.record.version,
            "batchsize": entry.batchsize, "device": entry.device, "preheat": entry.preheat,
            # The first process of an automatically sized backend measures the model.
            "measure_cost": entry.auto_sized and entry.inferprocnum > 1,
            # An encrypted model's key reaches the worker through the spawn pipe, never disk.
            "secret": base64.b64encode(bundle.secret).decode() if bundle.encrypted else "",
        }


def _cost_key(entry: BackendEntry, bundle: Bundle) -> tuple:
    return bundle.fullhash, entry.batchsize, entry.inferprocnum, entry.device

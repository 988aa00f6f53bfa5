"""Getting one inference process's pipeline ready: load, preheat, measure, describe.

What runs once before serving, apart from the serving loop (`worker.py`): the bundle
loaded on its backend, one preheat item through the whole pipeline, the batch cap and
cost per item measured (`batching.py`), and the model's tensors described for the
Open Inference Protocol.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import time
from pathlib import Path

import redis

from aiserving.backends import create_backend
from aiserving.bundle.store import BundleStore
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import AiservingError
from aiserving.inference import batching
from aiserving.inference.pipeline import Item, Pipeline
from aiserving.jobs import tensors as oip
from aiserving.status import ProcStatus

log = logging.getLogger("aiserving.worker")


class Warmup:
    def __init__(self, spec: dict, broker, consumer: str, on_stage):
        self.spec = spec
        self.settings = spec["settings"]
        self.broker = broker
        self.consumer = consumer
        self.fullhash = f"{spec['implhash']}-{spec['version']}"
        self.on_stage = on_stage
        # Seconds per item by batch size, as measured (batching.py); empty: not measured.
        self.costs: dict[int, float] = {}
        self._sample: Item | None = None  # the preheat item, until the tensors are described

    def load(self) -> Pipeline:
        bundle = BundleStore(self.settings["storage"]).load(
            self.spec["implhash"], self.spec["version"]).with_device_key(
            self.settings["crypto.device_key"])
        if self.spec.get("secret"):
            bundle = bundle.with_secret(base64.b64decode(self.spec["secret"]))
        vendor = VendorCode.load(bundle)
        backend = create_backend(bundle.record.backend_type, self.settings)
        backend.load(bundle, self.spec.get("device") or None)
        return Pipeline(bundle, vendor, backend, on_stage=self.on_stage,
                        storage=self.settings["storage"])

    def measure(self, pipeline: Pipeline, tune: bool, batchsize: int) -> tuple[int, float | None]:
        """(batch cap, seconds per item at it) from timing this pipeline on the preheat
        input (batching.py); `tune` False: batch 1 only, `batchsize` stays as set.
        The cost is None where the preheat input does not run in batches."""
        path = str(pipeline.bundle.preheat_file() or self.spec["preheat"])
        failed = []

        def run(n: int) -> None:
            items = [Item({"uuid": f"tune{i}", "path": path}) for i in range(n)]
            pipeline.run(items)
            failed.extend(i.error.message for i in items if i.error is not None)

        # One process at a time: two measuring side by side on a small box would each
        # see the other's load, not their model's. The first one's answer serves the
        # backend's other processes (the same model on the same box and threads).
        run_dir = Path(self.settings["storage"]) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        threads = self.settings["be.trpy.threads"] or self.settings["backend.threads"]
        limit = batchsize if tune else 1
        known = run_dir / f"tune-{self.fullhash}-{limit}-{threads}.json"
        with open(run_dir / "tune.lock", "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                found = json.loads(known.read_text())
                cap, table = int(found["cap"]), {int(n): c for n, c in found["table"].items()}
                log.info("%s: batches capped at %d, as measured by this backend's first "
                         "process", self.fullhash, cap if tune else batchsize)
            except (OSError, ValueError, KeyError, TypeError):
                cap, table = batching.measure(run, limit, per_batch=self._batch_overhead())
                if failed:  # the preheat input does not batch: leave the batch size as set
                    log.warning("batch sizes not measured (%s); batches up to %d", failed[0],
                                batchsize)
                    return batchsize, None
                known.write_text(json.dumps({"cap": cap, "table": table}))
                if tune:
                    log.info("%s: %s", self.fullhash, batching.describe(cap, table))
                else:
                    log.info("%s: %.3f ms per item at batch 1 (batches not measured: "
                             "batch.autotune)", self.fullhash, 1000 * table[1])
        self.costs = table
        return (cap if tune else batchsize), table[cap]

    def _batch_overhead(self) -> float:
        """Seconds a batch costs besides its pipeline: taking it from redis and answering
        it (the same kinds of commands on scratch keys of this process)."""
        db, key = self.broker.db, f"{self.broker.keys.prefix}tune:{self.consumer}"
        times = []
        try:
            for _ in range(15):
                t0 = time.perf_counter()
                db.xlen(key)
                pipe = self.broker.results.pipeline(transaction=False)
                pipe.set(key, b"r" * 256, ex=5)
                pipe.rpush(key + ":reply", b"r" * 256)
                pipe.expire(key + ":reply", 5)
                pipe.execute()
                pipe = db.pipeline(transaction=False)
                pipe.xlen(key)
                pipe.xlen(key)
                pipe.execute()
                times.append(time.perf_counter() - t0)
        except redis.RedisError:
            return 0.0  # measured without it; the serving loop rides the outage out
        # The best, as for the pipeline's own runs: a stall of a box still busy starting
        # (the framework probes import every framework at once) is not the model's cost.
        return min(times)

    def describe(self, pipeline: Pipeline) -> dict | None:
        """The model's tensors, published for Open Inference Protocol metadata: what the
        framework tells, the rest from one trial batch of the preheat item's feeds."""
        sample, self._sample = self._sample, None
        try:
            specs = pipeline.backend.tensor_specs() or {}
            feeds = outputs = None
            known = all(specs.get(role) is not None and all(
                s.get("dtype") and s.get("shape") is not None for s in specs[role])
                for role in ("inputs", "outputs"))
            if not known and sample is not None and sample.pre_out is not None:
                feeds = pipeline._stack([sample])  # exactly what a batch of it feeds
                outputs = pipeline.backend.predict(feeds)
            return oip.describe(specs, feeds, outputs,
                                shared=[t == "0" for t in pipeline.input_type])
        except Exception as exc:  # serving goes on; only raw tensor requests are refused
            log.warning("%s: the model's tensors are unknown (%s: %s): Open Inference "
                        "Protocol raw tensor requests are refused", self.fullhash,
                        type(exc).__name__, exc)
            return None

    def preheat(self, pipeline: Pipeline) -> tuple[ProcStatus, str]:
        # The bundle's own input first: it knows what its pre-processing reads. Then
        # the backend's (or else the node-wide) `preheat` image.
        try:
            own = pipeline.bundle.preheat_file()
        except AiservingError as exc:
            return ProcStatus.ERROR, exc.message
        item = self._sample = Item({"uuid": "preheat", "path": str(own or self.spec["preheat"])})
        pipeline.run([item])
        if item.error is None:
            return ProcStatus.RUNNING, ""
        if isinstance(item.cause, IndexError) and "post-processing" in item.error.message:
            # The usual symptom of a labels list shorter than the model's classes.
            return ProcStatus.LABEL_ERROR, f"labels do not fit the model's output: {item.error.message}"
        return ProcStatus.ERROR, f"preheat failed: {item.error.message}"

"""The inference process: load once, then loop read batch -> pre -> infer -> post -> write.

Started by the node with the `spawn` method (never forked after a framework
was imported). It reports its status to the node over its own pipe and knows
nothing of any framework: the backend registry gives it one.

Jobs it held when it died stay pending in the stream: its restarted successor
(same consumer name) reads them first, and any live worker takes over jobs
left idle longer than `worker.claim_idle_ms` (XAUTOCLAIM). A job that keeps
killing its worker is failed after `worker.max_deliveries` deliveries.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import redis

from aiserving import metrics
from aiserving.broker import broker as brk
from aiserving.errors import AiservingError, hide_paths
from aiserving.inference import batching
from aiserving.inference.job_batch import JobBatch, Lookahead
from aiserving.inference.pipeline import Pipeline, Timings
from aiserving.inference.progress import EXIT_LOAD_FAILED, INDEX, STAGE, STARTED, write_batch
from aiserving.inference.warmup import Warmup
from aiserving.jobs.inputs import limit_pixels
from aiserving.logs import setup_logging
from aiserving.procutil import die_with_parent
from aiserving.status import ProcStatus

log = logging.getLogger("aiserving.worker")

_BLOCK_MS = 500  # longest blocking read, so a stop request is seen quickly
_DRAIN_BLOCK_MS = 200
_POLL_S = 0.001  # while filling a batch
_DRAIN_GRACE_S = 1.0
_FINISH_PATIENCE_S = 30.0


def worker_main(spec: dict, conn, stop_event, progress, board) -> None:
    """Entry point of a spawned inference process."""
    # The node decides when workers stop (Ctrl-C and group-wide SIGTERM reach us too);
    # if the node itself dies, so do we -- pending jobs survive in the stream.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)
    setup_logging(spec["settings"]["log.level"], f"worker {spec['consumer']}")
    limit_pixels(spec["settings"]["request.max_pixels"])  # before any vendor code runs
    Worker(spec, conn, stop_event, progress, board).run()


#: slots of the shared `progress` array the node's watchdog reads
_MIN_BATCH_TIMEOUT_S = 10.0
_BATCH_TIMEOUT_FACTOR = 10.0  # x the measured warm-up time of one item, x the batch size


class Worker:
    def __init__(self, spec: dict, conn, stop_event, progress, board):
        self.spec = spec
        self.progress = progress
        self.board = board
        self.settings = spec["settings"]
        self.conn = conn
        self.stop_event = stop_event
        self.consumer = spec["consumer"]
        self.fullhash = f"{spec['implhash']}-{spec['version']}"
        self.batchsize = int(spec["batchsize"])
        self.max_delay = float(self.settings["batch.max_delay_ms"]) / 1000.0
        self.profile = bool(self.settings["profile"])
        self.broker = brk.Broker(spec["redis_url"], spec["node"],
                                 result_ttl=int(self.settings["result.ttl_s"]),
                                 prefix=self.settings["redis.key_prefix"],
                                 shared_inputs=self.settings["fleet.shared_inputs"],
                                 store_answered=self.settings["result.store_answered"])
        self.tmp_dir = Path(self.settings["storage"]) / "run" / "tmp"
        self.outage = brk.Outage(f"worker {self.consumer}")
        self._busy = False
        # Seconds per item by batch size, as measured at preheat (batching.py); empty:
        # not measured, batches wait up to batch.max_delay_ms to fill.
        self._costs: dict[int, float] = {}
        self._held: list = []  # read beyond a full batch (one read spans several streams)
        self._ahead: Lookahead | None = None  # the next batch, pre-processed meanwhile
        self._reread = False  # redis failed: read this process's pending jobs again
        self.overlap = False  # pre-process the next batch during inference (run())
        self._metrics = None
        self._cpu_mark = 0.0
        self.tensor_meta: dict | None = None
        self.warmup = Warmup(spec, self.broker, self.consumer, self._on_stage)

    def report(self, status: ProcStatus, msg: str = "", **extra) -> None:
        # Published to every door (GET /switch, ListBackend): no path of the node's own.
        self._send({"status": int(status), "msg": hide_paths(msg, self.settings["storage"]),
                    "pid": os.getpid(), **extra})

    def _send(self, message: dict) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # the node is gone; the parent-death signal ends us

    def _on_stage(self, stage: int, index: int) -> None:
        # Plain stores into shared memory: nothing on the request path waits for the node.
        self.progress[STAGE] = stage
        self.progress[INDEX] = index

    def run(self) -> None:
        self.report(ProcStatus.LOADING)
        t_load = time.monotonic()
        try:
            pipeline = self.warmup.load()
        except AiservingError as exc:
            log.error("cannot load %s: %s", self.fullhash, exc.message)
            self.report(ProcStatus.ERROR, exc.message)
            os._exit(EXIT_LOAD_FAILED)
        except Exception as exc:  # a framework failing in an unforeseen way
            log.exception("cannot load %s", self.fullhash)
            self.report(ProcStatus.ERROR, f"loading failed: {type(exc).__name__}: {exc}")
            os._exit(EXIT_LOAD_FAILED)
        self.report(ProcStatus.PREHEATING)
        t0 = time.monotonic()
        status, msg = self.warmup.preheat(pipeline)
        if status != ProcStatus.RUNNING:
            log.error("preheat of %s failed: %s", self.fullhash, msg)
            self.report(status, msg)
            os._exit(EXIT_LOAD_FAILED)
        batch_timeout = float(self.settings["worker.batch_timeout_s"]) or max(
            _MIN_BATCH_TIMEOUT_S, _BATCH_TIMEOUT_FACTOR * (time.monotonic() - t0) * self.batchsize)
        self.tensor_meta = self.warmup.describe(pipeline)
        item_cost = None
        tune = self.settings["batch.autotune"] and self.batchsize > 1
        if tune or self.spec.get("measure_cost"):
            self.batchsize, item_cost = self.warmup.measure(pipeline, tune, self.batchsize)
            self._costs = self.warmup.costs
        overlap = self.settings["worker.overlap_pre"]
        # On the CPU the other processes keep every core busy: a thread more would only
        # take from them. An accelerator waits for the CPU between batches.
        self.overlap = overlap == "on" or overlap == "auto" and \
            not pipeline.backend.device.lower().startswith("cpu")
        metrics.model_load_seconds().labels(self.fullhash).observe(time.monotonic() - t_load)
        self.report(ProcStatus.RUNNING, batch_timeout=batch_timeout, batch_cap=self.batchsize,
                    tensors=self.tensor_meta, overlap_pre=self.overlap, item_cost=item_cost)
        log.info("serving %s on %s, batch size %d, batch deadline %.1f s%s", self.fullhash,
                 pipeline.backend.device, self.batchsize, batch_timeout,
                 ", next batch pre-processed during inference" if self.overlap else "")
        self.serve(pipeline)
        pipeline.backend.unload()
        self.report(ProcStatus.EXITED)

    # --- the serving loop ---------------------------------------------------------

    def serve(self, pipeline: Pipeline) -> None:
        b = self.broker
        claim_every = self.settings["worker.claim_idle_ms"] / 2000.0
        own_pending = True  # a restarted worker first finishes what its predecessor held
        next_claim = 0.0
        quiet_since = None
        group_ready = False
        while True:
            stopping = self.stop_event.is_set()
            if self._reread:  # redis failed mid-way (or came back without our stream)
                self._reread, group_ready, own_pending = False, False, True
            if self._ahead is not None:  # read and being pre-processed: its turn now
                ahead, self._ahead = self._ahead, None
                try:
                    self._process(pipeline, ahead.batch.jobs, False, ahead)
                except redis.RedisError as exc:
                    self._redis_lost(exc)
                continue
            jobs, redelivered = [], False
            try:
                if not group_ready:  # at start, and after redis came back (maybe empty)
                    b.ensure_group(self.fullhash)
                    group_ready = True
                if self._held and not own_pending:
                    jobs, self._held = self._held, []
                if not jobs and own_pending:
                    jobs = b.read(self.fullhash, self.consumer, self.batchsize, None, pending=True)
                    own_pending = bool(jobs)
                    redelivered = bool(jobs)
                if not jobs and time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + claim_every
                    jobs = b.claim_stale(self.fullhash, self.consumer,
                                         self.settings["worker.claim_idle_ms"], self.batchsize)
                    redelivered = bool(jobs)
                if not jobs:
                    jobs = b.read(self.fullhash, self.consumer, self.batchsize,
                                  _DRAIN_BLOCK_MS if stopping else _BLOCK_MS)
                    if jobs and not stopping and len(jobs) < self.batchsize:
                        jobs += self._fill(len(jobs))
                if not redelivered:
                    jobs = self._hold_surplus(jobs)
                self.outage.ok()
            except redis.RedisError as exc:
                self._redis_lost(exc)
                if stopping and self.outage.down_for() > _DRAIN_GRACE_S:
                    break
                time.sleep(self.outage.backoff())
                continue
            if not jobs:
                if stopping:
                    # Drain: leave only once the queue has stayed empty a while, so a job
                    # a front queued just before traffic moved elsewhere is still served.
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= _DRAIN_GRACE_S:
                        break
                continue
            quiet_since = None
            try:
                if redelivered:
                    # One at a time: if one of them is what killed the last worker, only it
                    # collects deliveries towards being given up.
                    for job in jobs:
                        self._process(pipeline, [job], True)
                else:
                    self._process(pipeline, jobs, False)
            except redis.RedisError as exc:
                self._redis_lost(exc)
        try:
            b.forget_consumer(self.fullhash, self.consumer)
        except Exception:  # nothing pending is lost either way; this is tidying only
            pass

    def _look_ahead(self, pipeline: Pipeline) -> Lookahead | None:
        """Read the next batch (what is queued now: no waiting) and start its
        pre-processing in a thread."""
        try:
            jobs = self.broker.read(self.fullhash, self.consumer, self.batchsize, None)
        except redis.RedisError as exc:
            self._redis_lost(exc)  # the read may have taken jobs all the same
            return None
        if not jobs:
            return None
        batch = JobBatch.admit(self._hold_surplus(jobs), tmp_dir=self.tmp_dir,
                               consumer=self.consumer)
        return Lookahead(batch, pipeline)

    def _hold_surplus(self, jobs: list) -> list:
        """A batch's worth of `jobs`; the rest (one read spans several streams) is held
        for the next batch."""
        if len(jobs) > self.batchsize:
            jobs, self._held = jobs[:self.batchsize], jobs[self.batchsize:] + self._held
        return jobs

    def _redis_lost(self, exc: Exception) -> None:
        """Redis failed mid-way: whatever this process read and has not answered is still
        pending for it there (if redis kept it), so forget the copies held here and read
        the pending jobs again once redis answers."""
        self.outage.failed(exc)
        ahead, self._ahead, self._held = self._ahead, None, []
        if ahead is not None:
            try:
                ahead.wait()
            except Exception:
                pass
            ahead.batch.remove_temp_files()
        self._reread = True

    def _fill(self, have: int) -> list:
        """More jobs for the batch, waiting at most batch.max_delay_ms for them, and no
        longer than running the batch held takes (batching.fill_wait).

        Polls instead of a short blocking read: redis resolves blocking time-outs
        only at its `hz` tick (100 ms by default), which would hold a lone
        request that long.
        """
        more: list = []
        start = time.monotonic()
        while have + len(more) < self.batchsize:
            more += self.broker.read(self.fullhash, self.consumer,
                                     self.batchsize - have - len(more), None)
            left = start + batching.fill_wait(self._costs, have + len(more), self.max_delay) \
                - time.monotonic()
            if left <= 0 or (not self._busy and not more):
                # Past the delay, or quiet traffic: nothing else is queued, so waiting
                # would only add latency.
                break
            time.sleep(min(left, _POLL_S))
        return more

    def _process(self, pipeline: Pipeline, jobs: list, redelivered: bool,
                 ahead: Lookahead | None = None) -> None:
        """Run one batch and answer it. `ahead`: the batch, already admitted and being
        pre-processed beside the last one's inference."""
        self._busy = len(jobs) > 1  # a batch formed: requests are arriving together
        t_start = time.time()
        batch = ahead.batch if ahead is not None else JobBatch.admit(
            jobs, deliveries=(lambda m: self.broker.deliveries(self.fullhash, m))
            if redelivered else None, max_deliveries=self.settings["worker.max_deliveries"],
            tmp_dir=self.tmp_dir, consumer=self.consumer)
        items = batch.items
        timings = Timings()
        cpu_pipeline = 0.0
        try:
            if items:
                # The node's watchdog: which jobs this batch holds, and since when.
                write_batch(self.board, [msg_id for msg_id, _, _ in items])
                self.progress[STARTED] = time.time()
                cpu0 = time.process_time()
                if ahead is not None:
                    timings, _ = ahead.wait()  # its CPU was counted in the last window
                else:
                    timings = pipeline.prepare(batch.pipeline_items)
                if self.overlap and not redelivered and not self.stop_event.is_set():
                    self._ahead = self._look_ahead(pipeline)
                pipeline.complete(batch.pipeline_items, timings)
                # (the next batch's pre-processing, beside it, is counted with that batch)
                cpu_pipeline += time.process_time() - cpu0
        finally:
            batch.remove_temp_files()
        self._finish(batch.rows(self.tensor_meta), batch.inline_bytes)
        if items:
            self._record(t_start, items, timings, cpu_pipeline)
        if self.profile and items:
            waits = [t_start - float(job.get("t", t_start)) for _, job, _ in items] or [0.0]
            log.info("batch of %d (%d failed): queue wait avg %.1f ms max %.1f ms | pre %.1f ms | "
                     "infer %.1f ms | post %.1f ms", timings.items, timings.failed,
                     1000 * sum(waits) / len(waits), 1000 * max(waits), 1000 * timings.pre,
                     1000 * timings.infer, 1000 * timings.post)

    def _record(self, t_start: float, items: list, timings, cpu_pipeline: float) -> None:
        if self._metrics is None:  # one model per process: its label lookups, once
            stages, cpu = metrics.stage_seconds(), metrics.worker_cpu_seconds()
            self._metrics = ({s: stages.labels(self.fullhash, s)
                              for s in ("queue", "pre", "infer", "post")},
                             metrics.batch_size().labels(self.fullhash),
                             cpu.labels(self.fullhash, "pipeline"),
                             cpu.labels(self.fullhash, "serving"))
            self._cpu_mark = time.process_time()  # the first batch's reading goes uncounted
        stages, batch, cpu_in, cpu_out = self._metrics
        # Everything since the last batch was recorded, less the pipeline: what serving
        # the jobs costs this process (blocked reads cost none).
        now = time.process_time()
        cpu_in.inc(cpu_pipeline)
        cpu_out.inc(max(0.0, now - self._cpu_mark - cpu_pipeline))
        self._cpu_mark = now
        for _, job, _ in items:
            stages["queue"].observe(max(0.0, t_start - float(job.get("t", t_start))))
        for stage in ("pre", "infer", "post"):
            stages[stage].observe(getattr(timings, stage))
        batch.observe(len(items))

    def _finish(self, rows: list, inline: int) -> None:
        """Store the batch's results; through a short redis outage, keep trying."""
        while True:
            try:
                self.broker.finish(self.fullhash, rows, inline)
                self.outage.ok()
                return
            except redis.RedisError as exc:
                self.outage.failed(exc)
                if self.outage.down_for() > _FINISH_PATIENCE_S or self.stop_event.is_set():
                    # Their callers were told redis was gone; jobs redis kept stay pending
                    # and run again.
                    log.error("dropping the results of %d job(s): redis is still away", len(rows))
                    return
                time.sleep(self.outage.backoff())

"""Inference processes as the node sees them: spawn, status, restart with back-off, and
the supervision loop that watches them all, the hung-batch watchdog included."""

from __future__ import annotations

import logging
import multiprocessing.connection
import time
from collections import deque
from pathlib import Path

import redis

from aiserving import metrics
from aiserving.errors import InferenceError
from aiserving.inference.entry import worker_main
from aiserving.status import ProcStatus
from aiserving.inference.progress import (BATCH_IDS_BYTES, EXIT_LOAD_FAILED, IDLE, INDEX, INFER,
                                          POST, PRE, STAGE, STARTED, read_batch, temp_prefix)

log = logging.getLogger(__name__)

RESTART_WINDOW_S = 60.0


class WorkerProcess:
    """One inference process slot; survives the deaths of the processes filling it."""

    def __init__(self, ctx, spec: dict, restart_limit: int):
        self.ctx = ctx
        self.spec = spec
        self.restart_limit = restart_limit
        self.status = ProcStatus.LOADING
        self.msg = ""
        self.process = None
        self.conn = None
        self.stop_event = None
        self.stopping = False
        self.failed = False
        self.start_at: float | None = time.monotonic()  # when to (re)start; None: not pending
        self.deaths: deque[float] = deque()
        # The watchdog's view of the batch in hand: its job ids (from the worker), the
        # shared progress array (batch start, stage, item), the worker's batch deadline.
        self.progress = None
        self.board = None  # shared: the ids of the batch the process runs
        self.batch_timeout: float | None = None
        self.batch_cap: int | None = None  # what the worker's preheat measured
        self.item_cost: float | None = None  # seconds per item at that cap, if measured
        self.overlap_pre: bool | None = None  # whether it pre-processes during inference
        self.tensors: dict | None = None  # the model's tensors, as the worker described them
        self.hung: list[str] = []  # jobs to answer with an error before the restart
        self.hang_error = ""

    @property
    def name(self) -> str:
        return self.spec["consumer"]

    @property
    def finished(self) -> bool:
        """Nothing runs and nothing will: stopped, or given up on."""
        return self.process is None and self.start_at is None

    def waitables(self) -> list:
        return [w for w in (self.conn, self.process and self.process.sentinel) if w is not None]

    def start_if_due(self, now: float) -> None:
        if self.start_at is None or now < self.start_at or self.stopping or self.hung:
            return  # (a stuck process's jobs are answered first)
        self.start_at = None
        recv, send = self.ctx.Pipe(duplex=False)
        self.stop_event = self.ctx.Event()
        self.progress = self.ctx.Array("d", 3, lock=False)
        self.board = self.ctx.Array("c", BATCH_IDS_BYTES, lock=False)
        self.batch_timeout = None
        self.process = self.ctx.Process(target=worker_main,
                                        args=(self.spec, send, self.stop_event, self.progress,
                                              self.board),
                                        name=self.name, daemon=True)
        self.process.start()
        send.close()  # only the child writes; EOF on our end means it is gone
        self.conn = recv
        self.status, self.msg = ProcStatus.LOADING, ""
        log.info("started inference process %s (pid %d) for %s-%s", self.name, self.process.pid,
                 self.spec["implhash"], self.spec["version"])

    def pump(self) -> bool:
        """Read status messages; True if the status changed."""
        changed = False
        while self.conn is not None:
            try:
                if not self.conn.poll():
                    break
                message = self.conn.recv()
            except (EOFError, OSError):
                self.conn.close()
                self.conn = None
                break
            status, msg = ProcStatus(message["status"]), message.get("msg", "")
            self.batch_timeout = message.get("batch_timeout", self.batch_timeout)
            self.batch_cap = message.get("batch_cap", self.batch_cap)
            self.item_cost = message.get("item_cost", self.item_cost)
            self.overlap_pre = message.get("overlap_pre", self.overlap_pre)
            self.tensors = message.get("tensors", self.tensors)
            changed |= (status, msg) != (self.status, self.msg)
            self.status, self.msg = status, msg
        return changed

    @property
    def busy(self) -> bool:
        """Serving, with a batch in hand."""
        return (self.status == ProcStatus.RUNNING and self.progress is not None
                and self.progress[STAGE] != IDLE)

    def watch(self, wall_now: float) -> bool:
        """Kill the process if its batch ran past the deadline; True if it did.

        The job it was stuck on (the item in pre- or post-processing, or the whole
        batch in the framework call) is kept in `hung`, to be answered with an
        error; the rest of the batch runs again after the restart.
        """
        if self.process is None or not self.busy or not self.batch_timeout or self.hung:
            return False
        took = wall_now - self.progress[STARTED]
        if took <= self.batch_timeout:
            return False
        stage, index = int(self.progress[STAGE]), int(self.progress[INDEX])
        batch = read_batch(self.board)
        if 0 <= index < len(batch) and (stage != INFER or len(batch) == 1):
            self.hung = [batch[index]]
        else:
            self.hung = batch
        where = {PRE: "pre-processing", INFER: "the framework call", POST: "post-processing"}
        self.hang_error = (f"the bundle's {where.get(stage, 'code')} did not finish within "
                           f"{self.batch_timeout:.1f} s (worker.batch_timeout_s); the inference "
                           f"process was restarted")
        log.error("%s: batch stuck in %s for %.1f s; killing the process and failing %d "
                  "job(s)", self.name, where.get(stage, "?"), took, len(self.hung))
        self.process.kill()
        return True

    def reap(self, now: float) -> bool:
        """Handle a process that exited; True if it did."""
        if self.process is None or self.process.is_alive():
            return False
        self.process.join()
        code = self.process.exitcode
        metrics.process_dead(self.process.pid)
        busy = self.busy
        self.process = None
        self._remove_temp_files()
        self.pump()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if code == EXIT_LOAD_FAILED:  # even while stopping: the error is what callers need
            self.failed = True
            if self.status not in (ProcStatus.ERROR, ProcStatus.LABEL_ERROR):
                self.status, self.msg = ProcStatus.ERROR, "the model failed to load"
        elif self.stopping:
            self.status = ProcStatus.EXITED
        elif self.hung:
            # Its jobs are answered by the node before the restart; not a death of the
            # backend's making.
            self.status, self.msg = ProcStatus.LOADING, self.hang_error
            self.start_at = now
            self._count_restart()
        elif busy:
            # Charged to the jobs of the batch (each counts its deliveries), not to the
            # backend: three bad inputs must not take a healthy model down.
            self.status, self.msg = ProcStatus.LOADING, f"restarting after exit code {code} " \
                "during a batch"
            self.start_at = now + 0.2
            self._count_restart()
            log.warning("inference process %s died during a batch (exit code %s); restarting",
                        self.name, code)
        else:
            self._died(code, now)
        return True

    def _count_restart(self) -> None:
        metrics.worker_restarts().labels(f"{self.spec['implhash']}-{self.spec['version']}").inc()

    def _remove_temp_files(self) -> None:
        """Inline inputs the process had written for jobs it did not finish."""
        tmp = Path(self.spec["settings"]["storage"]) / "run" / "tmp"
        for path in tmp.glob(temp_prefix(self.name) + "*"):
            try:
                path.unlink()
            except OSError:
                pass

    def _died(self, code, now: float) -> None:
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_S:
            self.deaths.popleft()
        if len(self.deaths) >= self.restart_limit:
            self.failed = True
            self.status = ProcStatus.ERROR
            self.msg = (f"inference process died {len(self.deaths)} times within "
                        f"{RESTART_WINDOW_S:.0f} s (last exit code {code})")
            log.error("%s: %s; giving up", self.name, self.msg)
            return
        self._count_restart()
        delay = min(0.5 * 2 ** (len(self.deaths) - 1), 10.0)
        self.status, self.msg = ProcStatus.LOADING, f"restarting after exit code {code}"
        self.start_at = now + delay
        log.warning("inference process %s died (exit code %s); restarting in %.1f s",
                    self.name, code, delay)

    def stop(self) -> None:
        """Ask the process to finish what it holds and exit (it drains its queue first)."""
        self.stopping = True
        self.start_at = None
        if self.stop_event is not None:
            self.stop_event.set()
        if self.process is None and not self.failed:
            self.status = ProcStatus.EXITED

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()


def supervise(node) -> None:
    """The node's supervision loop (a thread of the daemon): pump every process's
    messages, restart the dead, kill the hung and answer what they held, grow and
    advance each generation, publish the result."""
    while not node.stopping.is_set():
        with node.lock:
            procs = [p for g in node.all_generations() for p in g.procs]
        waitables = [w for p in procs for w in p.waitables()]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=0.2)
        else:
            time.sleep(0.2)
        if node.stopping.is_set():
            break
        now = time.monotonic()
        wall = time.time()
        with node.lock:
            for p in procs:
                p.pump()
                p.watch(wall)
                if p.reap(now) and p.hung:
                    _answer_hung(node, p)
                p.start_if_due(now)
            for entry in node.backends.values():
                node.spawner.grow(entry)
                entry.advance()
            node.orphans = [g for g in node.orphans if not g.finished]
            node.publish()


def _answer_hung(node, p: WorkerProcess) -> None:
    """Answer the jobs a killed, stuck process held, before its successor starts:
    they are never run again."""
    fullhash = f"{p.spec['implhash']}-{p.spec['version']}"
    try:
        uuids = node.broker.fail_pending(fullhash, p.name, p.hung, InferenceError(p.hang_error))
    except redis.RedisError as exc:
        log.error("cannot answer the jobs of stuck process %s: %s", p.name, exc)
        return  # tried again on the next round; the restart waits for it
    p.hung = []
    entry = node.backends.get(p.spec["bid"])
    if entry is not None:
        entry.msg = (f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {p.hang_error}; request(s) "
                     f"{', '.join(uuids) or '(already answered)'} failed")

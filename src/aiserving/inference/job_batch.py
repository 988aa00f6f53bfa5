"""Jobs read from redis made into a batch of pipeline items, and the items' answers.

A worker admits the jobs it read (`JobBatch.admit`): a job that killed too many
processes, or whose caller's deadline passed, is answered with an error unrun;
an inline input is written to a private temporary file; Open Inference Protocol
tensors are unpacked. After the pipeline ran, `rows` are what `Broker.finish`
stores and answers.

`Lookahead` pre-processes the next batch in a thread while the worker runs the
current one's inference (`worker.overlap_pre`): on an accelerator the CPU would
otherwise sit idle during inference, and the accelerator during pre-processing.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from aiserving.broker import broker as brk
from aiserving.errors import AiservingError, InferenceError, ProcessingError, RequestTimeout
from aiserving.inference.pipeline import Item, Pipeline, Timings, to_json
from aiserving.inference.progress import temp_prefix
from aiserving.jobs import tensors as oip

# What legacy clients polling db 5 find for an Open Inference Protocol request: its
# tensors went to its caller only.
_OIP_STORED = (b'{"status":"success","message":"Open Inference Protocol tensors, '
               b'answered to the caller"}')


class JobBatch:
    """The jobs of one batch: those to run (`items`) and those answered unrun."""

    def __init__(self, jobs: list):
        self.jobs = jobs  # (message id, fields) as read
        self.items: list[tuple[bytes, dict, Item]] = []  # (message id, job, item)
        self.poisoned: list[tuple[bytes, dict, AiservingError]] = []
        self.temp_files: list[str] = []

    @classmethod
    def admit(cls, jobs: list, *, deliveries=None, max_deliveries: int = 0,
              tmp_dir: Path, consumer: str) -> "JobBatch":
        """`deliveries(msg_id)`: for redelivered jobs, how often each was delivered."""
        batch = cls(jobs)
        now = time.time()
        for msg_id, fields in jobs:
            job = {k.decode(): v for k, v in fields.items()}
            if deliveries is not None and deliveries(msg_id) > max_deliveries:
                batch.poisoned.append((msg_id, job, InferenceError(
                    "this request stopped the inference process several times and was given up")))
                continue
            if job.get("deadline") and float(job["deadline"]) < now:
                # Its caller stopped waiting (and was told so): running it would only
                # delay the requests behind it.
                batch.poisoned.append((msg_id, job, RequestTimeout(
                    "the caller's deadline passed before this request ran; it was dropped")))
                continue
            infer_data = {"uuid": job.get("uuid", b"").decode(),
                          "path": job.get("path", b"").decode()}
            if job.get("image"):
                infer_data["path"] = _temp_image(tmp_dir, consumer, job["image"],
                                                 job.get("type", b"").decode())
                batch.temp_files.append(infer_data["path"])
            item = Item(infer_data)
            if job.get("oip"):
                try:
                    item.tensors = [t.array(writable=True) for t in oip.unpack(
                        job["oip"], job.get("tensors", b""))]
                except AiservingError as exc:
                    batch.poisoned.append((msg_id, job, exc))
                    continue
            batch.items.append((msg_id, job, item))
        return batch

    @property
    def pipeline_items(self) -> list[Item]:
        return [item for _, _, item in self.items]

    @property
    def inline_bytes(self) -> int:
        return sum(brk.inline_size(fields) for _, fields in self.jobs)

    def rows(self, tensor_meta: dict | None) -> list:
        """What `Broker.finish` stores and answers, one row per job."""
        rows = [_row(msg_id, job, item, tensor_meta) for msg_id, job, item in self.items]
        rows += [_error_row(msg_id, job, error) for msg_id, job, error in self.poisoned]
        return rows

    def remove_temp_files(self) -> None:
        for path in self.temp_files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.temp_files = []


class Lookahead:
    """The next batch, pre-processed in a thread while the current one runs inference.

    Its pre-processing does not report stages: the node's watchdog follows the
    batch on the board. Its jobs are pending for this process: if it dies meanwhile,
    its successor reads them first.
    """

    def __init__(self, batch: JobBatch, pipeline: Pipeline):
        self.batch = batch
        self._timings: Timings | None = None
        self._cpu = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(pipeline,), name="pre-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, pipeline: Pipeline) -> None:
        cpu0 = time.thread_time()
        try:
            self._timings = pipeline.prepare(self.batch.pipeline_items, report=False)
        except BaseException as exc:  # the pipeline catches vendor errors: this is a bug
            self._error = exc
        self._cpu = time.thread_time() - cpu0

    def wait(self) -> tuple[Timings, float]:
        """The pre-processing's timings and CPU seconds, once it is done."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._timings, self._cpu


def _row(msg_id, job: dict, item: Item, tensor_meta: dict | None):
    if item.error is None and item.tensors is not None:
        try:
            reply = oip.encode_reply(oip.name_outputs(item.result, tensor_meta))
        except AiservingError as exc:
            item.error = exc
        else:
            return (msg_id, item.uuid, job.get("reply"), _OIP_STORED, reply)
    if item.error is None:
        try:
            text = to_json(item.result)
        except (TypeError, ValueError, RecursionError) as exc:
            item.error = ProcessingError(f"post-processing returned a result that is not "
                                         f"JSON: {type(exc).__name__}: {exc}")
        else:
            return (msg_id, item.uuid, job.get("reply"), text.encode("utf-8"),
                    brk.encode_result(text))
    return _error_row(msg_id, job, item.error)


def _error_row(msg_id, job: dict, error: AiservingError):
    return (msg_id, job.get("uuid", b"").decode(), job.get("reply"),
            brk.failure_text(error), brk.encode_error(error))


def _temp_image(tmp_dir: Path, consumer: str, data: bytes, kind: str) -> str:
    # A private folder and a name of our choosing: never a path built from user input.
    # The prefix names the process, so the node can remove what it leaves if it dies.
    tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    suffix = "." + kind if kind.isalnum() and len(kind) <= 8 else ""
    fd, path = tempfile.mkstemp(prefix=temp_prefix(consumer), suffix=suffix, dir=tmp_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path

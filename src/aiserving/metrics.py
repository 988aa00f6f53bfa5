"""Prometheus metrics of every process of a node, served by the REST front at `/metrics`.

The node is many processes: gunicorn's workers, the node daemon, the inference
processes. Each writes its samples to files in one folder (prometheus-client's
multi-process mode, `PROMETHEUS_MULTIPROC_DIR` = `<storage>/run/metrics`), and
the front adds them up at scrape time. The queue depth is read from redis at
scrape time instead, so it is right even when nothing moves.

`enable(folder)` must run before `prometheus_client` is first imported in the
process tree (the client picks its multi-process storage at import); the
appliance calls it before it starts anything. Without it (a worker started by a
test on its own) the metrics are process-local and harmless.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"

#: seconds: from sub-millisecond front work to a slow model on a small board
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_made: dict = {}
_making = threading.Lock()


def enable(folder: Path) -> None:
    """Start a fresh multi-process folder for this node and its children."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)


def _metric(kind: str, name: str, doc: str, labels=(), **kwargs):
    # Made on first use: an importing process that never records pays nothing.
    found = _made.get(name)
    if found is None:
        # Once per process: two objects for one metric would each keep its own value and
        # overwrite the other's in the shared file (the front's first requests arrive
        # together, and making one can yield to another greenlet).
        with _making:
            found = _made.get(name)
            if found is None:
                import prometheus_client

                found = _made[name] = getattr(prometheus_client, kind)(name, doc, labels,
                                                                       **kwargs)
    return found


def requests():
    return _metric("Counter", "aisrv_requests", "Inference requests answered, by door, "
                   "model and outcome (ok, or the error's legacy code)",
                   ("door", "model", "outcome"))


def request_seconds():
    return _metric("Histogram", "aisrv_request_seconds", "Time from taking a request to "
                   "answering it, in the front", ("door", "model"), buckets=_LATENCY_BUCKETS)


def in_flight():
    return _metric("Gauge", "aisrv_front_in_flight", "Requests the front processes are "
                   "answering now", multiprocess_mode="livesum")


def stage_seconds():
    return _metric("Histogram", "aisrv_stage_seconds", "Time in each stage: queue (a job's "
                   "wait before its batch started), pre, infer and post (a whole batch)",
                   ("model", "stage"), buckets=_LATENCY_BUCKETS)


def batch_size():
    return _metric("Histogram", "aisrv_batch_size", "Jobs in each batch a worker ran",
                   ("model",), buckets=_BATCH_BUCKETS)


def worker_cpu_seconds():
    return _metric("Counter", "aisrv_worker_cpu_seconds", "CPU time of the inference "
                   "processes: part `pipeline` (pre, infer, post) and `serving` (the rest: "
                   "reading jobs, batching, answering, bookkeeping)", ("model", "part"))


def worker_restarts():
    return _metric("Counter", "aisrv_worker_restarts", "Inference processes restarted "
                   "after they died or hung", ("model",))


def model_load_seconds():
    return _metric("Histogram", "aisrv_model_load_seconds", "Time an inference process took "
                   "to load its model and preheat it", ("model",), buckets=_LOAD_BUCKETS)


def process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (its counters stay counted)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def exposition(queue_depths) -> tuple[bytes, str]:
    """The text a scrape gets: every process's samples and the queue depth now.

    `queue_depths`: a callable giving {model: jobs waiting or running}.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    registry = CollectorRegistry()
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)

    class _Queues:
        def collect(self):
            family = GaugeMetricFamily("aisrv_queue_depth", "Jobs waiting or running in a "
                                       "model's queue", labels=["model"])
            for model, depth in sorted(queue_depths().items()):
                family.add_metric([model], depth)
            yield family

    registry.register(_Queues())
    return generate_latest(registry), CONTENT_TYPE_LATEST

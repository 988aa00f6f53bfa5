"""Serving: batches, queues, workers, stored results, the shutdown grace."""

from __future__ import annotations

from aiserving.config.checks import Setting, non_negative, positive

TITLE = "Serving"

SETTINGS: tuple[Setting, ...] = (
    # keys of this product
    Setting("batch.size", 8, "int",
            "Default backend batch size (most jobs one framework call takes).",
            lambda v: None if 1 <= v <= 1000 else "must be between 1 and 1000"),
    Setting("batch.max_delay_ms", 5.0, "float",
            "Longest time a worker waits for a batch to fill once it holds a job; a lone "
            "request is never held longer. Where the preheat measured the model "
            "(`batch.autotune`, or an automatic process count), a batch waits no longer "
            "than running it takes.",
            non_negative),
    Setting("batch.autotune", True, "bool",
            "At preheat, time the model at batch 1, 2, 4, ... up to the batch size and cap "
            "batches where the cost per item stops falling (logged, and shown by GET "
            "/switch as `sizing.batch_cap`); false: batches up to the batch size."),
    Setting("queue.max_len", 1000, "int",
            "Most jobs waiting or in flight per model stream (a model's stream of inline "
            "jobs, a node's own stream of its local files, a shared folder's); past it "
            "requests get 503 at once.", positive),
    Setting("queue.max_inline_bytes", 256 * 1024 ** 2, "int",
            "Most bytes of inline inputs (gRPC InferenceRemote) held in redis per model, "
            "waiting or in flight; past it 1 / 503 at once. Bounds redis's memory by bytes, "
            "not only by `queue.max_len` jobs.", positive),
    Setting("shutdown.grace_s", 0.0, "float",
            "On SIGTERM, how long the node keeps answering what it accepted before it exits: "
            "the REST front finishes its requests, then the workers the queued jobs. Never "
            "shorter than `request.timeout_s` (0: `request.timeout_s` + 5 s).", non_negative),
    Setting("result.ttl_s", 3600, "int",
            "Seconds a result stays in redis db 5 under its uuid.", positive),
    Setting("result.store_answered", True, "bool",
            "Store every result in redis db 5 under its uuid, also those a waiting caller "
            "(REST `/detect`, Open Inference Protocol) received in its answer. Off: only "
            "results nobody waited for (gRPC InferenceLocal/Remote, a caller past its "
            "time-out) are stored, one redis command less per request."),
    Setting("worker.claim_idle_ms", 30000, "int",
            "A job unacknowledged this long by a worker that is gone is taken over by a "
            "live one (XAUTOCLAIM).", positive),
    Setting("worker.max_deliveries", 3, "int",
            "A job delivered this many times without finishing (it keeps killing its "
            "worker) is failed instead of retried.", positive),
    Setting("worker.restart_limit", 5, "int",
            "Deaths of one inference process within 60 s, while loading or idle, before its "
            "backend is marked failed. Deaths while it runs a batch are charged to the "
            "batch's jobs (`worker.max_deliveries`), not to the backend.", positive),
    Setting("worker.overlap_pre", "auto", "str",
            "Pre-process the next batch in a thread while the current one runs inference: "
            "`on`, `off`, or `auto` (on where the model runs on an accelerator, GPU or NPU; "
            "off on the CPU, whose cores the inference processes already keep busy).",
            lambda v: None if v in ("auto", "on", "off") else "must be auto, on or off"),
    Setting("worker.batch_timeout_s", 0.0, "float",
            "Longest one batch may run (pre, infer, post). Past it the inference process is "
            "killed and restarted, the request it was stuck on is answered with an error "
            "(never run again) and the rest of its batch runs again. 0: ten times the "
            "measured warm-up time of one item times the batch size, at least 10 s.",
            non_negative),
)

"""Settings: built-in defaults < settings.py < environment (AISRV_*).

`settings.py` is the legacy format: a Python file defining a dict named
`settings`. Every key can be overridden by an environment variable named
`AISRV_` + the key upper-cased with dots as underscores (`redis.host` ->
`AISRV_REDIS_HOST`). A value that cannot be used stops the start with one
sentence naming the setting (`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import runpy
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import quote

from aiserving.errors import ConfigError


class Setting(NamedTuple):
    key: str
    default: Any
    kind: str  # str | int | float | bool | list
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None


def _port(v):
    return None if 0 <= v <= 65535 else "must be a TCP port between 0 and 65535"


def _positive(v):
    return None if v > 0 else "must be greater than 0"


def _non_negative(v):
    return None if v >= 0 else "must not be negative"


def _one_of(*choices):
    def check(v):
        return None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)
    return check


def _torch_device(v):
    return None if re.fullmatch(r"cpu|cuda(:\d+)?", v) else "must be 'cpu', 'cuda' or 'cuda:N'"


def _networks(v):
    try:
        for item in v:
            ipaddress.ip_network(item.strip(), strict=False)
    except ValueError as exc:
        return f"must list IP addresses or CIDR networks (e.g. 127.0.0.1,10.0.0.0/8): {exc}"
    return None


def _redis_url(v):
    if not v:
        return None
    from aiserving.redis_target import parse

    try:
        parse(v)
    except ValueError as exc:
        return str(exc)
    return None


def _host_ports(v):
    for item in v:
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"must list host:port addresses (e.g. 10.0.0.5:26379,10.0.0.6:26379), not {item!r}"
    return None


def _log_level(v):
    return _one_of("DEBUG", "INFO", "WARNING", "ERROR")(v.upper())


SETTINGS: tuple[Setting, ...] = (
    # --- legacy keys (contract, section 4) ---
    Setting("storage", "storage", "str",
            "Folder holding the JSM bundles (`<storage>/models/<implhash>/<version>/`) and the "
            "node's private files. A relative path is taken from the settings file's folder."),
    Setting("preheat", "", "str",
            "Image used to warm a model up after loading. Empty: a built-in grey 224x224 JPEG."),
    Setting("redis.host", "", "str",
            "Redis host. Empty: the node starts an embedded redis of its "
            "own on a unix socket under `<storage>/run/`."),
    Setting("redis.port", "6379", "str",
            "Redis port: of the configured redis, or where the embedded one also listens over "
            "TCP (on `redis.bind`) so legacy clients can read results; \"0\": no TCP listener.",
            lambda v: None if v.isdigit() and 0 <= int(v) < 65536 else "must be a TCP port number"),
    Setting("redis.recover_s", 60.0, "float",
            "Longest the node keeps running while redis does not answer (an embedded redis "
            "that exited is restarted at once). Past it the node exits with code 3, so the "
            "box's supervisor (systemd, Docker) restarts it.", _positive),
    Setting("redis.bind", "127.0.0.1", "str",
            "Address the embedded redis listens on over TCP (for legacy db 5 readers). Beyond "
            "loopback it needs `redis.password`; the node refuses to start otherwise."),
    Setting("redis.password", "", "str",
            "Password of the embedded redis (`requirepass`; every client, the node's own "
            "included, then authenticates), or of the configured one (unless `redis.url` "
            "carries one)."),
    Setting("redis.url", "", "str",
            "The redis to use, as a URL; set, it wins over `redis.host`/`redis.port` and "
            "`redis.sentinels`. `redis://[user:password@]host:port[/db]`, `rediss://...` for "
            "TLS (CA: `redis.tls_ca` or `?ssl_ca_certs=`; client certificate: "
            "`?ssl_certfile=&ssl_keyfile=`), or Redis Sentinel: "
            "`redis+sentinel://[user:password@]host:port,host:port/service[/db]` "
            "(`rediss+sentinel://` for TLS; `?sentinel_password=` if the sentinels ask one). "
            "The db number holds the node's own keys; results for legacy clients stay in "
            "db 5. Empty: `redis.host`, else the embedded redis.", _redis_url),
    Setting("redis.sentinels", [], "list",
            "Redis Sentinel addresses (`host:port,host:port`): the node uses the primary "
            "they name for `redis.sentinel_service` and follows its failovers. Ignored when "
            "`redis.url` is set; for TLS or sentinel passwords use its `redis+sentinel://` "
            "form.", _host_ports),
    Setting("redis.sentinel_service", "mymaster", "str",
            "The service (master) name the sentinels of `redis.sentinels` monitor.",
            lambda v: None if v.strip() else "must not be empty"),
    Setting("redis.tls_ca", "", "str",
            "PEM CA certificate(s) a `rediss://` redis's certificate is checked against "
            "(a relative path is taken from the settings file's folder). Empty: the system's "
            "CAs."),
    Setting("redis.key_prefix", "aisrv:", "str",
            "Start of every key the node writes in redis (jobs, replies, state, fleet "
            "registry): nodes with the same prefix form one fleet and share job queues; "
            "another prefix is another fleet, invisible to this one. Results for legacy "
            "clients stay under the bare uuid in db 5.",
            lambda v: None if re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", v)
            else "must be 1 to 64 letters, digits or _ . : - { }"),
    Setting("be.tfsrv.host", "127.0.0.1", "str", "TensorFlow Serving host (tensorflow-serving backend)."),
    Setting("be.tfsrv.adapter", "restful", "str",
            "How to reach TensorFlow Serving: `restful` (REST predict API on "
            "`be.tfsrv.rest_port`) or `grpc` (PredictionService on `be.tfsrv.grpc_port`).",
            _one_of("restful", "grpc")),
    Setting("be.tfsrv.grpc_port", 8500, "int", "TensorFlow Serving gRPC port.", _port),
    Setting("be.tfsrv.rest_port", 8501, "int", "TensorFlow Serving REST port.", _port),
    Setting("be.trpy.mixed_mode", False, "bool",
            "PyTorch structureSplit: load only the parameters whose names and shapes match "
            "the structure, warn for the rest (legacy value \"1\")."),
    Setting("be.trpy.device", "cpu", "str",
            "PyTorch device: `cpu`, `cuda` or `cuda:N`; falls back to cpu with a warning "
            "when CUDA is absent.", _torch_device),
    Setting("be.trpy.threads", 0, "int",
            "PyTorch CPU threads per inference process; 0: half the cores (at least 1), "
            "leaving the rest to pre/post-processing, the fronts and redis.", _non_negative),
    Setting("be.rknnpy.target", "rk3399pro", "str", "Rockchip NPU target of the rknn backend."),
    Setting("be.rknnpy.core_mask", "auto", "str",
            "RK3588 NPU cores an rknn backend runs on: `auto`, `0`, `1`, `2`, `0_1`, `0_1_2` "
            "or `all` (other targets have one core and ignore it).",
            _one_of("auto", "0", "1", "2", "0_1", "0_1_2", "all")),
    Setting("be.tfsrv.timeout_s", 10.0, "float",
            "Longest one TensorFlow Serving predict call may take before the batch fails.",
            _positive),
    Setting("be.tf.device", "auto", "str",
            "TensorFlow device (tensorflow backend): `auto` (a GPU where TensorFlow sees one, "
            "else the CPU), `cpu`, `gpu`/`cuda` or `gpu:N`/`cuda:N`; a backend's own `device` "
            "wins.", lambda v: None if re.fullmatch(r"auto|cpu|(gpu|cuda)(:\d+)?", v)
            else "must be 'auto', 'cpu', 'gpu' or 'gpu:N'"),
    Setting("be.onnx.providers", [], "list",
            "ONNX Runtime execution providers in order of preference (e.g. "
            "`CUDAExecutionProvider,CPUExecutionProvider`); empty: CUDA where onnxruntime "
            "offers it, then the CPU. Providers this onnxruntime lacks are skipped with a "
            "warning."),
    Setting("be.mxnet.device", "cpu", "str",
            "MXNet context: `cpu`, `gpu` or `gpu:N`; falls back to cpu with a warning where "
            "no GPU is usable.", lambda v: None if re.fullmatch(r"cpu|gpu(:\d+)?", v)
            else "must be 'cpu', 'gpu' or 'gpu:N'"),
    Setting("backend.threads", 0, "int",
            "CPU threads per inference process of the TensorFlow, TF-Lite, ONNX and MXNet "
            "backends; 0: half the cores (at least 1), as for PyTorch.", _non_negative),
    # --- new keys ---
    Setting("http.host", "127.0.0.1", "str", "Address the REST front binds to."),
    Setting("http.port", 8080, "int", "REST port (`--port` overrides).",
            lambda v: None if 0 < v < 65536 else "must be a TCP port between 1 and 65535"),
    Setting("http.workers", 0, "int",
            "gunicorn worker processes of the REST front; 0 = one per two cores (at least 1). "
            "One gevent process holds thousands of waiting requests; a second one pays off "
            "only where the front's CPU time, not the model's, is the limit, and each costs "
            "about 40 MB.", _non_negative),
    Setting("http.connections", 1000, "int",
            "Most client connections one REST worker process serves at once (gevent "
            "greenlets: waiting `/detect` calls and idle keep-alive connections included); "
            "more wait in the listen backlog.", _positive),
    Setting("http.read_timeout_s", 10.0, "float",
            "Longest the REST front waits on a client's socket for one read or write (a "
            "request's headers or body, the answer); slower or half-sent connections are "
            "closed. Idle keep-alive connections close after 2 s.", _positive),
    Setting("http.max_waiting_per_model", 0, "int",
            "Most `/detect` requests one REST worker process keeps waiting on one model; past "
            "it, 503 at once, so a stuck model cannot take every connection slot from the "
            "others. 0: half of `http.connections`.", _non_negative),
    Setting("grpc.address", "127.0.0.1:50051", "str",
            "gRPC listen address (`host:port`; a bare port means `[::]:port`). Loopback "
            "unless set: `[::]:50051` or `0.0.0.0:50051` opens it to the network. The old "
            "product's settings key `port` and variable `AISRV_PORT` set it too (an old "
            "device's file keeps listening where it did).",
            lambda v: None if v.rpartition(":")[2].isdigit() else "must be host:port"),
    Setting("grpc.threads", 16, "int", "Threads serving gRPC calls.", _positive),
    Setting("oip.grpc_address", "127.0.0.1:8001", "str",
            "Listen address (`host:port`) of the Open Inference Protocol (KServe v2) gRPC "
            "service, `inference.GRPCInferenceService`, in the node daemon (`grpc.threads` "
            "threads of its own; the tokens and TLS of the legacy gRPC API). Loopback unless set. "
            "Empty: off. (The REST form is always served under `/v2` on the REST front.)",
            lambda v: None if not v or v.rpartition(":")[2].isdigit()
            else "must be host:port, or empty (off)"),
    Setting("auth.token", "", "str",
            "Bearer token every REST call but `/healthz` and every gRPC call must carry "
            "(`Authorization: Bearer <token>`; gRPC metadata `authorization`). Empty: none "
            "asked, as the old product."),
    Setting("auth.admin_token", "", "str",
            "Bearer token management calls must carry (loads, unloads, model create/change/"
            "delete/import/export, uploads, downloads); it passes wherever `auth.token` does. "
            "Empty: `auth.token` covers them. Set alone, it guards management calls only."),
    Setting("crypto.device_key", "", "str",
            "This device's private key (PEM; `aiserving device-key` makes it, mode 0600): "
            "bundles sealed for its public key (`aiserving bundle encrypt`) load without "
            "any key in the request. A relative path is taken from the settings file's "
            "folder. Empty: `<storage>/keys/device-key.pem`."),
    Setting("auth.admin_addresses", [], "list",
            "Addresses management calls (those `auth.admin_token` covers) are accepted from: "
            "IP addresses or CIDR networks (e.g. `127.0.0.1,10.0.0.0/8`), checked against the "
            "connection's own peer address (never `X-Forwarded-For`); others get 403 / "
            "PERMISSION_DENIED. With tokens set, both must pass. Empty: no address check.",
            _networks),
    Setting("tls.cert", "", "str",
            "PEM certificate (chain) of the node: with `tls.key`, gRPC uses TLS and the REST "
            "front serves HTTPS only. A relative path is taken from the settings file's "
            "folder. Empty: both doors speak plain text, as the old product."),
    Setting("tls.key", "", "str",
            "PEM private key of `tls.cert` (not passphrase-protected; keep it mode 0600)."),
    Setting("tls.client_ca", "", "str",
            "PEM CA certificate(s) gRPC clients must present a certificate from (mutual TLS); "
            "needs `tls.cert`. Empty: no client certificate asked. REST does not ask one."),
    Setting("grpc.max_message_bytes", 0, "int",
            "Largest gRPC message the node receives or sends; a larger one is refused with "
            "RESOURCE_EXHAUSTED. 0: room for the base64 of a `request.max_image_bytes` "
            "InferenceRemote image (about 43 MiB by default). At least 2 MiB + 64 KiB (an "
            "UploadBin chunk).",
            lambda v: None if v == 0 or v >= 2 * 1024 ** 2 + 64 * 1024
            else "must be 0 or at least 2162688 (a 2 MiB upload chunk and its envelope)"),
    Setting("grpc.load_timeout_s", 300.0, "float",
            "Longest CreateAndLoadModel waits for the model to run before it gives up and "
            "removes the backend it created.", _positive),
    Setting("upload.ttl_s", 3600, "int",
            "Seconds an upload (gRPC UploadBin) is kept if no import uses it; an older one "
            "is gone (an import naming it answers 104).", _positive),
    Setting("upload.max_bytes", 500 * 2 * 1024 ** 2, "int",
            "Largest single upload (the legacy bound: 500 chunks of 2 MiB); past it the "
            "upload is refused (uuid `-1`, then RESOURCE_EXHAUSTED) and its file removed.",
            _positive),
    Setting("upload.max_total_bytes", 2 * 1024 ** 3, "int",
            "Most bytes all uploads not yet imported (in progress or finished) may hold on "
            "disk at once; an upload that would pass it is refused (uuid `-1`, then "
            "RESOURCE_EXHAUSTED) and its file removed.", _positive),
    Setting("import.max_bytes", 2 * 1024 ** 3, "int",
            "Most bytes a model archive may unpack to; larger archives are refused.", _positive),
    Setting("model.max_labels", 10_000, "int",
            "Most labels a model record may have in CreateModel, DistroConfig and imports.",
            _positive),
    Setting("model.max_record_bytes", 1024 ** 2, "int",
            "Largest model record (distros.json) CreateModel, DistroConfig and imports "
            "accept: ListModels answers every record at once.", _positive),
    Setting("import.max_entries", 10_000, "int",
            "Most entries a model archive may have; counted while reading, before anything "
            "is written.", _positive),
    Setting("import.max_ratio", 200.0, "float",
            "Most unpacked bytes per archive byte a model archive may have (a small archive "
            "that unpacks to a disk-filling one is refused).", _positive),
    Setting("request.max_image_bytes", 32 * 1024 ** 2, "int",
            "Largest input accepted: an inline one (gRPC InferenceRemote) or a file named by "
            "`/detect` or InferenceLocal.", _positive),
    Setting("input.roots", [], "list",
            "Folders `/detect` and InferenceLocal may read input files from (symlinks are "
            "resolved first; a relative path is taken from the settings file's folder). "
            "Empty: `<storage>/input`, `<storage>/demo` and the system temp folder "
            "(`/tmp`)."),
    Setting("request.max_pixels", 100_000_000, "int",
            "Most pixels an image may have: Pillow (in the front and in vendor code) and "
            "OpenCV refuse larger ones from their header, before decoding, so a "
            "decompression bomb is a clear 4xx error, not a node out of memory.", _positive),
    Setting("http.max_body_bytes", 1024 * 1024, "int",
            "Largest REST request body; a larger one is refused with 413 before it is read.",
            _positive),
    Setting("node.name", "", "str",
            "Name of this node in a shared redis. Empty: the host name. Two nodes sharing "
            "one redis need different names."),
    Setting("fleet.node_ttl_s", 10.0, "float",
            "The node announces itself in the fleet registry of its redis (`GET "
            "/api/v1alpha/nodes`, gRPC `aiserving.fleet.v1.Fleet`) every third of this; a "
            "node not heard from for this long drops out of it.",
            lambda v: None if v >= 1 else "must be at least 1"),
    Setting("fleet.shared_inputs", [], "list",
            "Folders (within `input.roots`) every node of the fleet mounts at the same path. "
            "A `/detect` or InferenceLocal job naming a file in one may run on any node "
            "declaring that folder; one naming any other file runs on the node that "
            "accepted it. Inline inputs run on whichever node serving the model is free."),
    Setting("fleet.advertise_host", "", "str",
            "Host name or address the fleet registry shows for this node's doors. Empty: "
            "each door's bind address, the host name where it binds every interface."),
    Setting("batch.size", 8, "int",
            "Default backend batch size (most jobs one framework call takes).",
            lambda v: None if 1 <= v <= 1000 else "must be between 1 and 1000"),
    Setting("batch.max_delay_ms", 5.0, "float",
            "Longest time a worker waits for a batch to fill once it holds a job; a lone "
            "request is never held longer. Where the preheat measured the model "
            "(`batch.autotune`, or an automatic process count), a batch waits no longer "
            "than running it takes.",
            _non_negative),
    Setting("backend.inferprocnum", 0, "int",
            "Default inference processes per backend. 0: chosen from the box and the model: "
            "at most one per core up to the legacy limit of 2 (1 on a GPU), as many as the "
            "model's measured cost per item calls for (one for a model much cheaper than "
            "the request path); the CPU threads per process (`backend.threads`, "
            "`be.trpy.threads` left 0) share the cores out among the most.",
            lambda v: None if 0 <= v <= 2 else "must be 0 (automatic), 1 or 2"),
    Setting("batch.autotune", True, "bool",
            "At preheat, time the model at batch 1, 2, 4, ... up to the batch size and cap "
            "batches where the cost per item stops falling (logged, and shown by GET "
            "/switch as `sizing.batch_cap`); false: batches up to the batch size."),
    Setting("backend.max_count", 8, "int", "Most backends one node runs.", _positive),
    Setting("queue.max_len", 1000, "int",
            "Most jobs waiting or in flight per model stream (a model's stream of inline "
            "jobs, a node's own stream of its local files, a shared folder's); past it "
            "requests get 503 at once.", _positive),
    Setting("queue.max_inline_bytes", 256 * 1024 ** 2, "int",
            "Most bytes of inline inputs (gRPC InferenceRemote) held in redis per model, "
            "waiting or in flight; past it 1 / 503 at once. Bounds redis's memory by bytes, "
            "not only by `queue.max_len` jobs.", _positive),
    Setting("request.timeout_s", 60.0, "float",
            "Longest a blocking `/detect` waits for its result.", _positive),
    Setting("shutdown.grace_s", 0.0, "float",
            "On SIGTERM, how long the node keeps answering what it accepted before it exits: "
            "the REST front finishes its requests, then the workers the queued jobs. Never "
            "shorter than `request.timeout_s` (0: `request.timeout_s` + 5 s).", _non_negative),
    Setting("result.ttl_s", 3600, "int",
            "Seconds a result stays in redis db 5 under its uuid.", _positive),
    Setting("result.store_answered", True, "bool",
            "Store every result in redis db 5 under its uuid, also those a waiting caller "
            "(REST `/detect`, Open Inference Protocol) received in its answer. Off: only "
            "results nobody waited for (gRPC InferenceLocal/Remote, a caller past its "
            "time-out) are stored, one redis command less per request."),
    Setting("worker.claim_idle_ms", 30000, "int",
            "A job unacknowledged this long by a worker that is gone is taken over by a "
            "live one (XAUTOCLAIM).", _positive),
    Setting("worker.max_deliveries", 3, "int",
            "A job delivered this many times without finishing (it keeps killing its "
            "worker) is failed instead of retried.", _positive),
    Setting("worker.restart_limit", 5, "int",
            "Deaths of one inference process within 60 s, while loading or idle, before its "
            "backend is marked failed. Deaths while it runs a batch are charged to the "
            "batch's jobs (`worker.max_deliveries`), not to the backend.", _positive),
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
            _non_negative),
    Setting("autoload", [], "list",
            "Models loaded on start, each a fullhash, `implhash/version`, implhash or "
            "distros `name` (env: comma-separated)."),
    Setting("log.level", "INFO", "str", "Log level (`--debug` sets DEBUG).", _log_level),
    Setting("profile", False, "bool",
            "Log per-stage timings (queue wait, pre, infer, post) for every batch (`--profile`)."),
)

_BY_KEY = {s.key: s for s in SETTINGS}
# The old product's settings.py key `port` is its gRPC bind address ("[::]:50051").
_ALIASES = {"port": "grpc.address"}  # legacy settings.py key -> key
_ENV_ALIASES = {"AISRV_PORT": "grpc.address"}  # legacy spelling; the key's own variable wins


def env_name(key: str) -> str:
    return "AISRV_" + key.upper().replace(".", "_")


def _convert(setting: Setting, raw: Any) -> Any:
    kind = setting.kind
    if kind == "str":
        return str(raw)
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError
        return int(str(raw).strip())
    if kind == "float":
        return float(str(raw).strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError
    if kind == "list":
        if isinstance(raw, (list, tuple)):
            return [str(x) for x in raw]
        text = str(raw).strip()
        if text.startswith("["):
            return [str(x) for x in json.loads(text)]
        return [part.strip() for part in text.split(",") if part.strip()]
    raise AssertionError(kind)


class Settings:
    """Validated settings of one node. Read values with `settings["redis.host"]`."""

    def __init__(self, values: dict[str, Any], source: Path | None = None):
        self._values = values
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def storage(self) -> Path:
        return Path(self._values["storage"])

    @property
    def grace_s(self) -> float:
        """The effective shutdown grace period (see `shutdown.grace_s`)."""
        timeout = float(self._values["request.timeout_s"])
        return max(float(self._values["shutdown.grace_s"]) or timeout + 5.0, timeout)

    @property
    def local_rest_url(self) -> str:
        """The REST door as a client on this box reaches it: a wildcard bind address is
        asked on loopback; https where the node has a certificate."""
        host = self._values["http.host"]
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self._values["tls.cert"] else "http"
        return f"{scheme}://{host}:{self._values['http.port']}"

    @property
    def redis_url(self) -> str | None:
        """The configured external redis as one URL (`redis_target`), or None for the
        embedded one."""
        from aiserving.redis_target import sentinel_url, with_defaults

        v = self._values
        url = v.get("redis.url") or ""
        if not url and v.get("redis.sentinels"):
            url = sentinel_url(v["redis.sentinels"], v.get("redis.sentinel_service") or "mymaster")
        elif not url and v["redis.host"]:
            auth = f":{quote(v['redis.password'], safe='')}@" if v["redis.password"] else ""
            url = f"redis://{auth}{v['redis.host']}:{v['redis.port']}"
        if not url:
            return None
        return with_defaults(url, v["redis.password"], v.get("redis.tls_ca") or "")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None,
             environ: dict | None = None) -> "Settings":
        """Defaults, then the settings file, then AISRV_* variables, then `overrides`.

        `path` None: `AISRV_SETTINGS`, else no file (defaults and environment only).
        """
        environ = os.environ if environ is None else environ
        path = path or environ.get("AISRV_SETTINGS") or None
        raw: dict[str, tuple[Any, str]] = {}
        base = Path.cwd()
        if path:
            path = Path(path).resolve()
            base = path.parent
            for name, value in _read_file(path).items():
                key = _ALIASES.get(name, name)
                if key not in _BY_KEY:
                    raise ConfigError(f"{path} has unknown setting '{key}'.")
                raw[key] = (value, f"'{name}' in {path.name}")
        for name, key in _ENV_ALIASES.items():
            if name in environ:
                raw[key] = (environ[name], name)
        for setting in SETTINGS:
            name = env_name(setting.key)
            if name in environ:
                raw[setting.key] = (environ[name], name)
        for key, value in (overrides or {}).items():
            raw[key] = (value, f"'{key}'")

        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value, where = raw.get(setting.key, (setting.default, f"default of '{setting.key}'"))
            try:
                value = _convert(setting, value)
                if setting.key == "grpc.address" and value.strip().isdigit():
                    value = f"[::]:{value.strip()}"  # a bare port, as some old files have it
            except (ValueError, TypeError, json.JSONDecodeError):
                raise ConfigError(f"Setting {where} is {value!r}, which is not a valid {setting.kind}.") from None
            complaint = setting.check(value) if setting.check else None
            if complaint:
                if setting.key == "redis.url":  # a password must not reach the log
                    from aiserving.redis_target import redact

                    value = redact(value)
                raise ConfigError(f"Setting {where} is {value!r}: it {complaint}.")
            values[setting.key] = value
        values["log.level"] = values["log.level"].upper()
        values["storage"] = str((base / values["storage"]).resolve())
        for key in ("preheat", "tls.cert", "tls.key", "tls.client_ca", "redis.tls_ca"):
            if values[key]:
                values[key] = str((base / values[key]).resolve())
        values["crypto.device_key"] = str((base / values["crypto.device_key"]).resolve()) \
            if values["crypto.device_key"] else str(Path(values["storage"]) / "keys" /
                                                    "device-key.pem")
        values["fleet.shared_inputs"] = [str((base / r).resolve())
                                         for r in values["fleet.shared_inputs"]]
        values["input.roots"] = [str((base / r).resolve()) for r in values["input.roots"]] or [
            str(Path(values["storage"]) / "input"), str(Path(values["storage"]) / "demo"),
            str(Path(tempfile.gettempdir()).resolve())]
        return cls(values, path)


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"Settings file {path} does not exist.")
    try:
        module = runpy.run_path(str(path))
    except Exception as exc:  # the file is user code: any failure is a config error
        raise ConfigError(f"Settings file {path} cannot be read: {type(exc).__name__}: {exc}.") from None
    data = module.get("settings", module.get("SETTINGS"))
    if not isinstance(data, dict):
        raise ConfigError(f"Settings file {path} must define a dict named 'settings'.")
    return data


def settings_table() -> str:
    """The README's settings table, generated from SETTINGS so it cannot drift."""
    rows = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = json.dumps(s.default) if not isinstance(s.default, str) else f'"{s.default}"'
        rows.append(f"| `{s.key}` | `{env_name(s.key)}` | `{default}` | {s.doc} |")
    return "\n".join(rows)

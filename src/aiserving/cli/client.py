"""A client of one node, over its legacy REST and gRPC APIs (what `aiserving models`,
`load`, `push`... use).

Only the public APIs are used, so the commands work against any node the
network reaches, and the same as a field integrator's client would. Every
failure becomes one of two errors, which the command line turns into exit
codes: the node could not be reached (`NodeUnreachable`), or it answered with
an error (`NodeRefused`).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from aiserving.api.grpc.uploads import CHUNK_BYTES, MAX_CHUNKS
from aiserving.errors import AiservingError

def _grpc():
    """grpc, imported on first use: its C core would log failures (a refused TLS
    handshake...) on stderr itself, where the command says each once, in its own words.
    The node, which imports this module with the command line, keeps its gRPC logs."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    return grpc


Progress = Callable[[int], None]  # called with the bytes moved since the last call


class ClientError(AiservingError):
    """A command against a node failed; `exit_code` is what the command line exits with."""

    exit_code = 1


class NodeRefused(ClientError):
    """The node answered, with an error (or with data that fails its checksum)."""


class NodeUnreachable(ClientError):
    """No answer: nothing listens there, TLS failed, or the call ran out of time."""

    exit_code = 3


@dataclass(frozen=True)
class Target:
    url: str  # REST base, http(s)://host:port
    grpc: str  # gRPC host:port
    token: str = ""
    cacert: str | None = None  # CA (or the node's own certificate) to trust for TLS
    cert: str | None = None  # client certificate and key, for a node asking for them
    key: str | None = None
    timeout: float = 30.0

    @property
    def tls(self) -> bool:
        # Both doors take TLS from the same settings (tls.cert): an https REST door means
        # a TLS gRPC door.
        return self.url.startswith("https:")


class NodeClient:
    def __init__(self, target: Target):
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # before grpc loads: see _grpc
        self.target = target
        self.url = target.url.rstrip("/")
        self._ssl = None
        if target.tls:
            try:
                self._ssl = ssl.create_default_context(cafile=target.cacert)
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(f"cannot use {target.cacert} as the CA certificate: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        self._channel = None
        self._stubs: dict = {}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- REST -------------------------------------------------------------------------

    def rest(self, method: str, path: str, body: dict | None = None, *,
             timeout: float | None = None) -> bytes:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.target.timeout,
                                        context=self._ssl) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise NodeRefused(f"{_message(exc.read()) or exc.reason} (HTTP {exc.code} from "
                              f"{method} {path})") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, TLS, DNS, time-out
            reason = getattr(exc, "reason", None) or exc
            raise NodeUnreachable(f"cannot reach the node at {self.url}: {reason}") from None

    def rest_json(self, method: str, path: str, body: dict | None = None, **kw) -> dict:
        raw = self.rest(method, path, body, **kw)
        try:
            return json.loads(raw)
        except ValueError:
            raise NodeRefused(f"{method} {path} answered something that is not JSON") from None

    def health(self) -> dict:
        return self.rest_json("GET", "/healthz")

    def switch_state(self, bid: str) -> dict:
        return self.rest_json("GET", "/api/v1alpha/switch?" + urllib.parse.urlencode({"bid": bid}))

    def switch(self, model: str, btype: str = "", bid: str = "", device: str = "") -> str:
        body = {k: v for k, v in (("model", model), ("btype", btype), ("bid", bid),
                                  ("device", device)) if v}
        return str(self.rest_json("POST", "/api/v1alpha/switch", body)["bid"])

    def detect(self, path: str, bid: str = "", timeout: float | None = None) -> dict:
        body = {"path": path, **({"bid": bid} if bid else {})}
        return self.rest_json("POST", "/api/v1alpha/detect", body, timeout=timeout)

    def nodes(self) -> list[dict]:
        """The fleet registry's live nodes (those sharing this node's redis)."""
        return self.rest_json("GET", "/api/v1alpha/nodes")["nodes"]

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting or running per model (fullhash), from the node's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.rest("GET", "/metrics").decode("utf-8", "replace")
        depths: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "aisrv_queue_depth":
                for sample in family.samples:
                    depths[sample.labels.get("model", "")] = int(sample.value)
        return depths

    # --- gRPC -------------------------------------------------------------------------

    def _stub(self, name: str):
        if name not in self._stubs:
            from aiserving.api.grpc import protocol

            if self._channel is None:
                self._channel = self._open_channel()
            module = getattr(protocol, f"{name.lower()}_pb2_grpc")
            self._stubs[name] = getattr(module, f"{name}Stub")(self._channel)
        return self._stubs[name]

    def _open_channel(self):
        grpc = _grpc()
        options = [("grpc.max_receive_message_length", 2 * CHUNK_BYTES),
                   ("grpc.max_send_message_length", 2 * CHUNK_BYTES)]
        if not self.target.tls:
            return grpc.insecure_channel(self.target.grpc, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.target.cacert), private_key=_read(self.target.key),
            certificate_chain=_read(self.target.cert))
        return grpc.secure_channel(self.target.grpc, credentials, options=options)

    @property
    def _metadata(self):
        return (("authorization", f"Bearer {self.target.token}"),) if self.target.token else ()

    def _call(self, service: str, rpc: str, request, timeout: float | None = None):
        method = getattr(self._stub(service), rpc)
        grpc = _grpc()
        try:
            return method(request, timeout=timeout or self.target.timeout,
                          metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._grpc_error(exc, rpc) from None

    def _grpc_error(self, exc, rpc: str) -> ClientError:
        grpc = _grpc()
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or str(code)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return NodeUnreachable(f"cannot reach the node's gRPC API at {self.target.grpc}: "
                                   f"{details}")
        return NodeRefused(f"{rpc}: {details} ({code.name if code else 'error'})")

    def _result(self, service: str, rpc: str, request, timeout: float | None = None) -> str:
        """A ResultReply rpc: its `msg`, or NodeRefused with the legacy code."""
        reply = self._call(service, rpc, request, timeout)
        if reply.code != 0:
            raise NodeRefused(f"{rpc}: {reply.msg} (code {reply.code})")
        return reply.msg

    def _ping(self):
        from aiserving.api.grpc.protocol import common_pb2

        return common_pb2.PingRequest(client="aiserving-cli")

    def version(self) -> str:
        return self._call("Connectivity", "Ping", self._ping()).version

    def resources(self) -> dict:
        reply = self._call("Connectivity", "ListNodeResources", self._ping())
        return {"cpu": reply.cpu, "mem": reply.mem, "gpu": reply.gpu, "dsk": reply.dsk}

    def models(self) -> list[dict]:
        reply = self._call("Model", "ListModels", self._ping())
        return [_model_dict(m) for m in reply.models]

    def backends(self) -> list[dict]:
        reply = self._call("Backend", "ListRunningBackends", self._ping())
        out = []
        for b in reply.backends:
            try:
                status = json.loads(b.status) if b.status else {}
            except ValueError:
                status = {}
            device = ""
            if b.info.backendext:
                try:
                    device = str(json.loads(b.info.backendext).get("device") or "")
                except (ValueError, AttributeError):
                    pass
            out.append({"bid": b.info.bid, "impl": b.info.impl, "batchsize": b.info.batchsize,
                        "inferprocnum": b.info.inferprocnum, "device": device,
                        "status": status, "msg": b.msg,
                        "model": _model_dict(b.model) if b.model.implhash else None})
        return out

    def terminate(self, bid: str) -> None:
        from aiserving.api.grpc.protocol import backend_pb2

        self._result("Backend", "TerminateBackend", backend_pb2.BackendInfo(bid=bid))

    def upload(self, archive: Path, progress: Progress | None = None) -> str:
        """UploadBin in 2 MiB chunks (each with its MD5); returns the upload id."""
        from aiserving.api.grpc.protocol import exchange_pb2

        size = archive.stat().st_size
        if size > MAX_CHUNKS * CHUNK_BYTES:
            raise NodeRefused(f"{archive} has {size} bytes; an upload may hold at most "
                              f"{MAX_CHUNKS} chunks of {CHUNK_BYTES} bytes")

        def chunks() -> Iterator:
            with open(archive, "rb") as fh:
                index = 0
                while True:
                    block = fh.read(CHUNK_BYTES)
                    if block or index == 0:  # an empty file is one empty chunk
                        yield exchange_pb2.BinData(pack=exchange_pb2.Block(
                            index=index, hash=hashlib.md5(block).hexdigest(), block=block))
                    if len(block) < CHUNK_BYTES:
                        return
                    index += 1

        grpc = _grpc()
        upload_id, received = "", 0
        try:
            for answer in self._stub("Exchange").UploadBin(chunks(), metadata=self._metadata,
                                                           timeout=max(self.target.timeout, 600)):
                if answer.uuid == "-1":
                    raise NodeRefused(f"the node refused the upload of {archive.name} "
                                      "(see its log)")
                upload_id = answer.uuid
                if progress:
                    progress(answer.size - received)
                received = answer.size
        except grpc.RpcError as exc:
            raise self._grpc_error(exc, "UploadBin") from None
        if received != size:
            raise NodeRefused(f"the node holds {received} bytes of the upload, not {size}")
        return upload_id

    def import_model(self, info: dict, upload_id: str) -> str:
        """ImportModelDistro of an uploaded archive; returns the stored fullhash."""
        from aiserving.api.grpc.protocol import model_pb2

        fields = {k: info[k] for k in _MODEL_FIELDS if info.get(k) not in (None, "", [])}
        if isinstance(fields.get("modelext"), dict):
            fields["modelext"] = json.dumps(fields["modelext"])
        return self._result("Model", "ImportModelDistro",
                            model_pb2.ModelInfo(bundle=upload_id, **fields), timeout=600)

    def export(self, implhash: str, version: str = "") -> str:
        from aiserving.api.grpc.protocol import model_pb2

        return self._result("Model", "ExportModelImage",
                            model_pb2.ModelInfo(implhash=implhash, version=version), timeout=600)

    def download(self, name: str, out: Path, progress: Progress | None = None) -> str:
        """DownloadBin into `out` (whole or not at all); each chunk's MD5 and the total size
        are checked against what the node sent. Returns the file's SHA-256."""
        from aiserving.api.grpc.protocol import exchange_pb2
        from aiserving.bundle.archive import atomic_output

        grpc = _grpc()
        digest = hashlib.sha256()
        total, received, index = None, 0, 0
        try:
            with atomic_output(out, 0o644) as fh:
                answers = self._stub("Exchange").DownloadBin(
                    iter([exchange_pb2.BinData(uuid=name)]), metadata=self._metadata,
                    timeout=max(self.target.timeout, 600))
                for answer in answers:
                    if answer.size == 0:  # the end of this image
                        break
                    block = answer.pack.block
                    if answer.pack.index != index:
                        raise NodeRefused(f"chunk {answer.pack.index} arrived where chunk "
                                          f"{index} was expected")
                    if answer.pack.hash and hashlib.md5(block).hexdigest() != answer.pack.hash:
                        raise NodeRefused(f"chunk {index} of {name} fails its MD5 checksum")
                    total = answer.size
                    fh.write(block)
                    digest.update(block)
                    received += len(block)
                    index += 1
                    if progress:
                        progress(len(block))
                else:
                    raise NodeRefused(f"the download of {name} ended before its last chunk")
                if total is not None and received != total:
                    raise NodeRefused(f"received {received} bytes of {name}, the node "
                                      f"announced {total}")
        except grpc.RpcError as exc:
            raise self._grpc_error(exc, "DownloadBin") from None
        return digest.hexdigest()


_MODEL_FIELDS = ("name", "labels", "head", "bone", "impl", "implhash", "version", "threshold",
                 "mapping", "modelext", "disthash")


def _model_dict(message) -> dict:
    out = {k: (list(getattr(message, k)) if k in ("labels", "threshold", "mapping")
               else getattr(message, k)) for k in _MODEL_FIELDS}
    out["fullhash"] = f"{out['implhash']}-{out['version']}"
    return out


def _message(raw: bytes) -> str:
    """The node's one-line explanation in an error body (`{"message": ...}`)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or "")
    return ""


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_address(address: str) -> str:
    """A listen address (`[::]:50051`, `0.0.0.0:50051`) as one a client on the box dials."""
    host, _, port = address.rpartition(":")
    if host in ("", "[::]", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def token_from_env() -> str:
    return os.environ.get("AISRV_TOKEN", "")

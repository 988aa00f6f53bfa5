"""The gRPC server of a node: five services of proto package `trueno`, in the node daemon.

Guarded by a server interceptor: tokens are checked before a call runs
(`UNAUTHENTICATED`), the address allow-list of management calls when it runs
(`PERMISSION_DENIED`: only the handler's context knows the peer).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc

from aiserving.api.grpc.backend_service import BackendService
from aiserving.api.grpc.connectivity_service import ConnectivityService
from aiserving.api.grpc.exchange_service import ExchangeService
from aiserving.api.grpc.fleet_service import FleetService, fleet_pb2_grpc
from aiserving.api.grpc.inference_service import InferenceService
from aiserving.api.grpc.model_service import ModelService
from aiserving.api.grpc.protocol import (backend_pb2_grpc, connectivity_pb2_grpc, exchange_pb2_grpc,
                                         inference_pb2_grpc, model_pb2_grpc)
from aiserving.api.auth import ADMIN_RPCS, Forbidden, Guard, TooManyFailures, Unauthenticated
from aiserving.api.grpc.uploads import CHUNK_BYTES, UploadStore
from aiserving.api.tls import TlsFiles
from aiserving.bundle.catalog import ModelCatalog
from aiserving.config import env_name
from aiserving.errors import ConfigError

log = logging.getLogger(__name__)

_MAX_MESSAGE = CHUNK_BYTES + 64 * 1024  # a 2 MiB chunk plus its envelope


def max_message_bytes(settings) -> int:
    """`grpc.max_message_bytes`, or (0) room for the base64 of the largest inline image."""
    return settings["grpc.max_message_bytes"] or max(
        _MAX_MESSAGE, settings["request.max_image_bytes"] * 4 // 3 + 64 * 1024)


class GrpcServer:
    def __init__(self, node, tls: TlsFiles | None = None):
        settings = node.settings
        self.node = node
        self.address = settings["grpc.address"]
        self.tls = tls
        self._stopped = threading.Event()
        run = settings.storage / "run"
        self.uploads = UploadStore(run / "uploads", settings["upload.ttl_s"],
                                   settings["upload.max_bytes"], settings["upload.max_total_bytes"])
        self.catalog = ModelCatalog(node.store, run, settings["import.max_bytes"],
                                    settings["model.max_labels"], settings["model.max_record_bytes"],
                                    settings["import.max_entries"], settings["import.max_ratio"])
        max_message = max_message_bytes(settings)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings["grpc.threads"],
                                       thread_name_prefix="grpc"),
            interceptors=interceptors(settings),
            options=[("grpc.max_receive_message_length", max_message),
                     ("grpc.max_send_message_length", max_message),
                     ("grpc.so_reuseport", 0)])
        backend_pb2_grpc.add_BackendServicer_to_server(BackendService(node), self.server)
        model_pb2_grpc.add_ModelServicer_to_server(
            ModelService(node, self.catalog, self.uploads), self.server)
        exchange_pb2_grpc.add_ExchangeServicer_to_server(
            ExchangeService(node, self.uploads, self.catalog), self.server)
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(node), self.server)
        connectivity_pb2_grpc.add_ConnectivityServicer_to_server(ConnectivityService(node), self.server)
        # Not trueno: the fleet registry (aiserving.fleet.v1), same port, same guard.
        fleet_pb2_grpc.add_FleetServicer_to_server(FleetService(node), self.server)

    def start(self) -> "GrpcServer":
        listening = listen(self.server, self.address, self.tls, "grpc.address")
        self.server.start()
        self._sweeper = threading.Thread(target=self._sweep, name="upload-sweeper", daemon=True)
        self._sweeper.start()
        log.info("gRPC API listening on %s: %s (protobuf: %s)", self.address,
                 listening, protobuf_implementation())
        return self

    def stop(self, grace: float = 5.0) -> None:
        self._stopped.set()
        self.server.stop(grace).wait(grace + 1)

    def _sweep(self) -> None:
        """Expired uploads go even when no new upload comes to trigger it."""
        while not self._stopped.wait(min(60.0, max(1.0, self.uploads.ttl_s / 4))):
            try:
                self.uploads.sweep()
            except OSError as exc:
                log.warning("cannot sweep uploads: %s", exc)


def listen(server: grpc.Server, address: str, tls: TlsFiles | None, key: str) -> str:
    """Bind `server` to the address setting `key` names, with the node's TLS if any;
    returns how it listens, for the log."""
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)], root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None)
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if not port:
        raise ConfigError(f"Setting '{key}' is {address!r}, which cannot be listened on (in "
                          f"use, or not a local address): set {env_name(key)}.")
    if tls is None:
        return "plain text, no TLS (set tls.cert and tls.key for TLS)"
    return "TLS, certificate " + tls.cert_path + (
        ", client certificates required (tls.client_ca)" if tls.client_ca else "")


def interceptors(settings) -> list:
    """What guards every gRPC server of the node: unreadable requests refused, then tokens."""
    guard = Guard.from_settings(settings)
    return [_ReadableRequests()] + ([_Authenticate(guard)] if guard.active else [])


class _Authenticate(grpc.ServerInterceptor):
    """Every call carries the token as `authorization` metadata, or is refused; a peer
    failing too often is refused outright (RESOURCE_EXHAUSTED) for a while."""

    def __init__(self, guard: Guard):
        self.guard = guard

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        metadata = dict(details.invocation_metadata or ())
        admin = details.method in ADMIN_RPCS
        guard = self.guard

        def check(context):  # at call time: the peer is known only then
            try:
                guard.authenticate(context.peer(), metadata.get("authorization"), admin,
                                   details.method)
                if admin:
                    guard.check_address(context.peer())
            except Unauthenticated as exc:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
            except TooManyFailures as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
            except Forbidden as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)

        return _checked(handler, check)


class _Malformed:
    """What the deserializer hands on for bytes that are not the rpc's message."""

    def __init__(self, why: str):
        self.why = why


class _ReadableRequests(grpc.ServerInterceptor):
    """A request that does not parse as the rpc's message is INVALID_ARGUMENT.

    Left to grpc it is INTERNAL, with a traceback in the log for every such call:
    what a client sent wrong must read as the client's mistake.
    """

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, details.method
        _, attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behaviour = getattr(handler, attribute)

        def deserialize(data):
            try:
                return parse(data)
            except Exception as exc:  # DecodeError, invalid UTF-8, ...: the sender's bytes
                return _Malformed(f"{type(exc).__name__}: {exc}")

        def check(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request is not a valid message for {method}: {request.why}")
            return request

        if handler.request_streaming:
            def requests_checked(requests, context):
                return (check(r, context) for r in requests)

            if handler.response_streaming:
                def run(requests, context):
                    yield from behaviour(requests_checked(requests, context), context)
            else:
                def run(requests, context):
                    return behaviour(requests_checked(requests, context), context)
        elif handler.response_streaming:
            def run(request, context):
                yield from behaviour(check(request, context), context)
        else:
            def run(request, context):
                return behaviour(check(request, context), context)
        return _like(handler, run, deserialize)


_KINDS = {(False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
          (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
          (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
          (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream")}


def _like(handler, behaviour, deserializer=None):
    """A handler of the same kind as `handler` that runs `behaviour` (and parses requests
    with `deserializer`, by default the handler's own)."""
    make, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _checked(handler, check):
    """`handler`, run once `check(context)` let the call through (it aborts otherwise)."""
    _, attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behaviour = getattr(handler, attribute)

    if handler.response_streaming:
        def guarded_stream(request, context):
            check(context)
            yield from behaviour(request, context)

        return _like(handler, guarded_stream)

    def guarded(request, context):
        check(context)
        return behaviour(request, context)

    return _like(handler, guarded)


def protobuf_implementation() -> str:
    from google.protobuf.internal import api_implementation

    kind = api_implementation.Type()
    if kind == "python":
        log.warning("protobuf runs its pure-Python implementation, which is much slower: "
                    "install a protobuf wheel for this platform (upb) or unset "
                    "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
    return kind

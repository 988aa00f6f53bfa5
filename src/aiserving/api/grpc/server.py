"""The gRPC server of a node: five services of proto package `trueno`, in the node daemon."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc

from aiserving.api.grpc.backend_service import BackendService
from aiserving.api.grpc.connectivity_service import ConnectivityService
from aiserving.api.grpc.exchange_service import ExchangeService
from aiserving.api.grpc.inference_service import InferenceService
from aiserving.api.grpc.model_service import ModelService
from aiserving.api.grpc.protocol import (backend_pb2_grpc, connectivity_pb2_grpc, exchange_pb2_grpc,
                                         inference_pb2_grpc, model_pb2_grpc)
from aiserving.auth import ADMIN_RPCS, Guard, Unauthenticated
from aiserving.bundle.catalog import ModelCatalog
from aiserving.errors import ConfigError
from aiserving.uploads import CHUNK_BYTES, UploadStore

log = logging.getLogger(__name__)

_MAX_MESSAGE = CHUNK_BYTES + 64 * 1024  # a 2 MiB chunk plus its envelope


class GrpcServer:
    def __init__(self, node):
        settings = node.settings
        self.node = node
        self.address = settings["grpc.address"]
        self._stopped = threading.Event()
        run = settings.storage / "run"
        self.uploads = UploadStore(run / "uploads", settings["upload.ttl_s"])
        self.catalog = ModelCatalog(node.store, run, settings["import.max_bytes"],
                                    settings["model.max_labels"], settings["model.max_record_bytes"],
                                    settings["import.max_entries"], settings["import.max_ratio"])
        max_message = max(_MAX_MESSAGE, settings["request.max_image_bytes"] * 4 // 3 + 1024)
        guard = Guard(settings["auth.token"], settings["auth.admin_token"])
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings["grpc.threads"],
                                       thread_name_prefix="grpc"),
            interceptors=[_Authenticate(guard)] if guard.active else [],
            options=[("grpc.max_receive_message_length", max_message),
                     ("grpc.max_send_message_length", _MAX_MESSAGE),
                     ("grpc.so_reuseport", 0)])
        backend_pb2_grpc.add_BackendServicer_to_server(BackendService(node), self.server)
        model_pb2_grpc.add_ModelServicer_to_server(
            ModelService(node, self.catalog, self.uploads), self.server)
        exchange_pb2_grpc.add_ExchangeServicer_to_server(
            ExchangeService(node, self.uploads, self.catalog), self.server)
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(node), self.server)
        connectivity_pb2_grpc.add_ConnectivityServicer_to_server(ConnectivityService(node), self.server)

    def start(self) -> "GrpcServer":
        try:
            port = self.server.add_insecure_port(self.address)
        except RuntimeError:
            port = 0
        if not port:
            raise ConfigError(f"Setting 'grpc.address' is {self.address!r}, which cannot be "
                              "listened on (in use, or not a local address): set "
                              "AISRV_GRPC_ADDRESS.")
        self.server.start()
        self._sweeper = threading.Thread(target=self._sweep, name="upload-sweeper", daemon=True)
        self._sweeper.start()
        log.info("gRPC API listening on %s (protobuf: %s)", self.address, protobuf_implementation())
        return self

    def stop(self, grace: float = 5.0) -> None:
        self._stopped.set()
        self.server.stop(grace).wait(grace + 1)

    def _sweep(self) -> None:
        """Expired uploads go even when no new upload comes to trigger it."""
        while not self._stopped.wait(60):
            try:
                self.uploads.sweep()
            except OSError as exc:
                log.warning("cannot sweep uploads: %s", exc)


class _Authenticate(grpc.ServerInterceptor):
    """Every call carries the token as `authorization` metadata, or is refused."""

    def __init__(self, guard: Guard):
        self.guard = guard

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        metadata = dict(details.invocation_metadata or ())
        try:
            self.guard.check(metadata.get("authorization"), details.method in ADMIN_RPCS)
        except Unauthenticated as exc:
            return _refusal(handler, exc.message)
        return handler


def _refusal(handler, message: str):
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def protobuf_implementation() -> str:
    from google.protobuf.internal import api_implementation

    kind = api_implementation.Type()
    if kind == "python":
        log.warning("protobuf runs its pure-Python implementation, which is much slower: "
                    "install a protobuf wheel for this platform (upb) or unset "
                    "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
    return kind

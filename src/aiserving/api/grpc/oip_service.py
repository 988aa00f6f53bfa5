"""Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService`.

Its own server on its own port (`oip.grpc_address`) in the node daemon, guarded
like the legacy one (tokens, TLS; none of its rpcs is a management call).
Requests take the path the REST form takes (`oip_door.py`); errors become
gRPC statuses through the one mapping (`mapping.answer`): an unknown model
NOT_FOUND, a wrong input name, datatype or shape INVALID_ARGUMENT.

Kept apart from `protocol.py`: its generated module defines package
`inference`, which a process holding tritonclient's stubs must not import.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

import aiserving
from aiserving.api.grpc.mapping import answer
from aiserving.api.grpc.server import interceptors, listen, max_message_bytes
from aiserving.api.oip_door import EXTENSIONS, OipDoor
from aiserving.errors import ConfigError, InputError
from aiserving.jobs import tensors as oip

try:
    from aiserving.api.grpc.generated import grpc_predict_v2_pb2 as pb
    from aiserving.api.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
except ImportError as exc:  # a source checkout where scripts/setup.sh has not run
    raise ConfigError(f"The gRPC modules are not generated ({exc}): run `bash scripts/setup.sh` "
                      "or `python scripts/gen_protos.py`.") from None

log = logging.getLogger(__name__)

# Typed contents field per datatype (FP16 travels only as raw contents).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "BYTES": "bytes_contents"}


class OipService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, node):
        self.door = OipDoor(node.broker, node.settings, "oip-grpc")
        self.version = aiserving.build_info()["version"]

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return answer(context, lambda: pb.ServerReadyResponse(ready=self.door.server_ready()))

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="aiserving", version=self.version,
                                         extensions=EXTENSIONS)

    def ModelReady(self, request, context):
        return answer(context, lambda: pb.ModelReadyResponse(
            ready=self.door.model_ready(request.name, request.version)))

    def ModelMetadata(self, request, context):
        def metadata():
            meta = self.door.metadata(request.name, request.version)
            tensors = {role: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[role]]
                       for role in ("inputs", "outputs")}
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                            platform=meta["platform"], **tensors)
        return answer(context, metadata)

    def ModelInfer(self, request, context):
        def infer():
            inputs = _inputs(request)
            wanted = [o.name for o in request.outputs] or None
            version, outputs = self.door.infer(request.model_name, request.model_version,
                                               inputs, wanted)
            return pb.ModelInferResponse(
                model_name=request.model_name, model_version=version, id=request.id,
                outputs=[pb.ModelInferResponse.InferOutputTensor(
                    name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
                raw_output_contents=[t.raw for t in outputs])
        return answer(context, infer)


def _inputs(request) -> list[oip.Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for "
                         f"{len(request.inputs)} inputs; one per input is needed")
    tensors = []
    for k, spec in enumerate(request.inputs):
        shape = list(spec.shape)
        if raw:
            tensors.append(oip.from_raw(spec.name, spec.datatype, shape, raw[k]))
            continue
        field = _CONTENTS.get(spec.datatype)
        if field is None:
            raise InputError(f"input {spec.name!r}: {spec.datatype or 'no datatype'} data "
                             "must come as raw_input_contents")
        tensors.append(oip.from_elements(spec.name, spec.datatype, shape,
                                         list(getattr(spec.contents, field))))
    return tensors


class OipGrpcServer:
    def __init__(self, node, tls=None):
        settings = node.settings
        self.address = settings["oip.grpc_address"]
        self.tls = tls
        max_message = max_message_bytes(settings)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings["grpc.threads"],
                                       thread_name_prefix="oip-grpc"),
            interceptors=interceptors(settings),
            options=[("grpc.max_receive_message_length", max_message),
                     ("grpc.max_send_message_length", max_message),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(OipService(node), self.server)

    def start(self) -> "OipGrpcServer":
        listening = listen(self.server, self.address, self.tls, "oip.grpc_address")
        self.server.start()
        log.info("Open Inference Protocol gRPC listening on %s: %s", self.address, listening)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait(grace + 1)

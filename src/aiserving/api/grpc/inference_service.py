"""gRPC Inference service: jobs on the same path as REST; results in redis db 5 under uuid.

As the old product did, every refusal of these two rpcs carries the rpc's own
code (110 local, 111 remote): an unknown `bid` as much as a missing field. A
full queue is not the caller's input: it answers 1 (runtime error), retry later.
"""

from __future__ import annotations

from aiserving import metrics
from aiserving.api.grpc.mapping import result
from aiserving.api.grpc.protocol import inference_pb2_grpc
from aiserving.api.intake import submit
from aiserving.errors import BackendNotFound, InputError, QueueFull
from aiserving.jobs.inputs import check_input_path, decode_inline

LOCAL_INPUT_ERROR = 110
REMOTE_INPUT_ERROR = 111


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, node):
        self.node = node

    def InferenceLocal(self, request, context):
        seen = {"model": ""}

        def local():
            backend = seen["backend"] = self._backend(request.bid)
            _require(request, "uuid", "path")
            settings = self.node.settings
            check_input_path(request.path, backend, settings["request.max_image_bytes"],
                             settings["input.roots"])
            return self._queue(backend, request, path=request.path)
        return _counted(result(LOCAL_INPUT_ERROR, local, keep=(QueueFull,)), seen)

    def InferenceRemote(self, request, context):
        seen = {"model": ""}

        def remote():
            backend = seen["backend"] = self._backend(request.bid)
            _require(request, "uuid", "base64", "type")
            data = decode_inline(request.base64, request.type, backend,
                                 self.node.settings["request.max_image_bytes"])
            return self._queue(backend, request, image=data, kind=request.type)
        return _counted(result(REMOTE_INPUT_ERROR, remote, keep=(QueueFull,)), seen)

    def _backend(self, bid: str) -> dict:
        try:
            return self.node.backend(bid)
        except BackendNotFound as exc:
            raise InputError(f"failed to find backend: {exc.message}") from None

    def _queue(self, backend: dict, request, **job) -> str:
        # Returns at once; `msg` is the uuid the result will be stored under in db 5.
        submit(self.node.broker, backend, request.uuid, **job)
        return request.uuid


def _counted(answer, seen: dict):
    # The result comes later (db 5): what the door knows is whether the job was queued.
    model = (seen.get("backend") or {}).get("serving") or ""
    metrics.requests().labels("grpc", model, "queued" if answer.code == 0
                              else str(answer.code)).inc()
    return answer


def _require(request, *fields: str) -> None:
    # proto3 cannot tell a field left out from an empty one; the old product
    # (MessageToDict) treated both as absent.
    missing = [f for f in fields if not getattr(request, f)]
    if missing:
        raise InputError(f"lack of data: field(s) {', '.join(missing)} required")

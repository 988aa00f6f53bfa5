"""gRPC Inference service: jobs on the same path as REST; results in redis db 5 under uuid."""

from __future__ import annotations

import uuid as uuidlib

from aiserving.api.grpc.mapping import result
from aiserving.api.grpc.protocol import inference_pb2_grpc
from aiserving.intake import check_image_path, decode_image, submit

LOCAL_INPUT_ERROR = 110
REMOTE_INPUT_ERROR = 111


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, node):
        self.node = node

    def InferenceLocal(self, request, context):
        def local():
            check_image_path(request.path)
            return self._queue(request, path=request.path)
        return result(LOCAL_INPUT_ERROR, local)

    def InferenceRemote(self, request, context):
        def remote():
            data = decode_image(request.base64, request.type,
                                self.node.settings["request.max_image_bytes"])
            return self._queue(request, image=data, kind=request.type)
        return result(REMOTE_INPUT_ERROR, remote)

    def _queue(self, request, **job) -> str:
        # Returns at once; `msg` is the uuid the result will be stored under.
        uuid = request.uuid or uuidlib.uuid4().hex
        submit(self.node.broker, self.node.backend(request.bid), uuid, **job)
        return uuid

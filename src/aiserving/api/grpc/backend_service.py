"""gRPC Backend service: the same operations as REST /switch, on the same node."""

from __future__ import annotations

import json

from aiserving.api.grpc.mapping import answer, result
from aiserving.api.grpc.protocol import backend_pb2, backend_pb2_grpc, model_info, split_fullhash
from aiserving.backends import supported_types
from aiserving.bundle.crypto import key_for
from aiserving.errors import BadRequest

# Legacy ResultReply codes of these rpcs (contract, section 3).
CREATE_AND_LOAD_ERROR = 106
RELOAD_ERROR = 107
TERMINATE_ERROR = 108
LOOKUP_ERROR = 109


class BackendService(backend_pb2_grpc.BackendServicer):
    def __init__(self, node):
        self.node = node

    # --- listing -----------------------------------------------------------------

    def ListSupportedType(self, request, context):
        # A JSON list of the backend types whose framework imports on this node.
        return backend_pb2.SupportedReply(support=json.dumps(supported_types()))

    def ListRunningBackends(self, request, context):
        return backend_pb2.BackendList(backends=[self._status(b) for b in self.node.all_backends()])

    def ListBackend(self, request, context):
        return answer(context, lambda: self._status(self.node.backend(request.bid)))

    def _status(self, backend: dict) -> "backend_pb2.BackendStatus":
        info = backend_pb2.BackendInfo(
            bid=backend["bid"], impl=backend["impl"], storage=str(self.node.settings.storage),
            preheat=backend["preheat"], batchsize=backend["batchsize"],
            inferprocnum=backend["inferprocnum"],
            backendext=json.dumps({"device": backend["device"]}) if backend["device"] else "")
        model = backend["model"]
        bundle = f"{model['implhash']}/{model['version']}" if model else ""
        return backend_pb2.BackendStatus(info=info, status=json.dumps(backend["status"]),
                                         msg=backend["msg"], model=model_info(model, bundle))

    # --- lifecycle ---------------------------------------------------------------

    def InitializeBackend(self, request, context):
        return result(1, lambda: self.node.create_backend(**self._backend_args(request)))

    def ReloadModelOnBackend(self, request, context):
        def reload():
            bundle = self.node.store.load(*_ref(request.model.implhash, request.model.version))
            self.node.load_model(request.bid, bundle.with_secret(_secret(request)))
        return result(RELOAD_ERROR, reload)

    def TerminateBackend(self, request, context):
        return result(TERMINATE_ERROR, lambda: self.node.terminate_backend(request.bid))

    def CreateAndLoadModel(self, request, context):
        return result(CREATE_AND_LOAD_ERROR, lambda: self._create_and_load(
            request, request.model.implhash, request.model.version))

    def CreateAndLoadModelV2(self, request, context):
        def create():
            implhash, version = split_fullhash(request.model.fullhash)
            return self._create_and_load(request, implhash, version)
        return result(CREATE_AND_LOAD_ERROR, create)

    def _create_and_load(self, request, implhash: str, version: str) -> str:
        args = self._backend_args(request.backend)
        bundle = self.node.store.load(*_ref(implhash, version)).with_secret(_secret(request))
        bid = request.backend.bid
        if bid and bid in {b["bid"] for b in self.node.all_backends()}:
            # The old product's behaviour: a bid naming a backend that exists loads the
            # model there (as ReloadModelOnBackend, but waiting) and answers that bid.
            self.node.load_model(bid, bundle)
            self.node.wait_running(bid, self.node.settings["grpc.load_timeout_s"])
            return bid
        return self.node.create_and_load(
            args.pop("impl") or bundle.record.impl, bundle,
            timeout=self.node.settings["grpc.load_timeout_s"], **args)

    @staticmethod
    def _backend_args(info) -> dict:
        device = ""
        if info.backendext:
            try:
                ext = json.loads(info.backendext)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise BadRequest("backendext must be a JSON object") from None
            if not isinstance(ext, dict):
                raise BadRequest("backendext must be a JSON object")
            device = str(ext.get("device") or "")
        return {"impl": info.impl, "batchsize": info.batchsize, "inferprocnum": info.inferprocnum,
                "device": device, "preheat": info.preheat}


def _ref(implhash: str, version: str) -> tuple[str, str]:
    if not implhash or not version:
        raise BadRequest("the model's implhash and version are required")
    return implhash, version


def _secret(request) -> bytes | None:
    """The key of an encrypted model (contract, section 5), decrypted on the node."""
    return key_for(request.encrypted, request.a64key, request.pvtkey)

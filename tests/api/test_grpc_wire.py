"""The wire format of the legacy gRPC API, pinned to the contract so it cannot drift."""

from google.protobuf.descriptor import FieldDescriptor as F

from aiserving.api.grpc import protocol

S, U32, U64, B, M = F.TYPE_STRING, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_BYTES, F.TYPE_MESSAGE
REP = "repeated"

# message -> {field: (number, type[, repeated])}, as in legacy-contract.md section 3.
MESSAGES = {
    "PingRequest": {"client": (1, S)},
    "ResultReply": {"code": (1, U32), "msg": (2, S)},
    "SupportedReply": {"support": (1, S)},
    "BackendInfo": {"bid": (1, S), "impl": (2, S), "storage": (3, S), "preheat": (4, S),
                    "batchsize": (5, U32), "inferprocnum": (6, U32), "exporter": (7, S),
                    "backendext": (8, S)},
    "BackendStatus": {"info": (1, M), "status": (2, S), "msg": (3, S), "model": (4, M)},
    "BackendList": {"backends": (1, M, REP)},
    "LoadRequest": {"bid": (1, S), "model": (2, M), "encrypted": (3, U32), "a64key": (4, S),
                    "pvtkey": (5, S)},
    "FullLoadRequest": {"backend": (1, M), "model": (2, M), "encrypted": (3, U32),
                        "a64key": (4, S), "pvtkey": (5, S)},
    "FullLoadRequestV2": {"backend": (1, M), "model": (2, M), "encrypted": (3, U32),
                          "a64key": (4, S), "pvtkey": (5, S)},
    "ModelInfo": {"name": (1, S), "labels": (2, S, REP), "bundle": (3, S), "head": (4, S),
                  "bone": (5, S), "impl": (6, S), "implhash": (7, S), "version": (8, S),
                  "threshold": (9, S, REP), "mapping": (10, S, REP), "modelext": (11, S),
                  "disthash": (12, S)},
    "ModelInfoBrief": {"name": (1, S), "labels": (2, S, REP), "bundle": (3, S), "head": (4, S),
                       "bone": (5, S), "impl": (6, S), "fullhash": (7, S), "implhash": (8, S),
                       "version": (9, S), "threshold": (10, S, REP), "mapping": (11, S, REP),
                       "modelext": (12, S), "disthash": (13, S)},
    "ModelList": {"models": (1, M, REP)},
    "PingReply": {"version": (1, S)},
    "ResourcesReply": {"cpu": (1, S), "mem": (2, S), "gpu": (3, S), "dsk": (4, S)},
    "Block": {"index": (1, U64), "hash": (2, S), "block": (3, B)},
    "BinData": {"uuid": (1, S), "hash": (2, S), "size": (3, U64), "pack": (4, M)},
    "InferRequest": {"bid": (1, S), "uuid": (2, S), "path": (3, S), "type": (4, S),
                     "base64": (5, S)},
}
MESSAGE_TYPES = {("BackendStatus", "info"): "BackendInfo", ("BackendStatus", "model"): "ModelInfo",
                 ("BackendList", "backends"): "BackendStatus", ("LoadRequest", "model"): "ModelInfo",
                 ("FullLoadRequest", "backend"): "BackendInfo",
                 ("FullLoadRequest", "model"): "ModelInfo",
                 ("FullLoadRequestV2", "backend"): "BackendInfo",
                 ("FullLoadRequestV2", "model"): "ModelInfoBrief",
                 ("ModelList", "models"): "ModelInfo", ("BinData", "pack"): "Block"}

# service -> {rpc: (request, reply, streaming)}
SERVICES = {
    "Backend": {"ListSupportedType": ("PingRequest", "SupportedReply", False),
                "ListRunningBackends": ("PingRequest", "BackendList", False),
                "InitializeBackend": ("BackendInfo", "ResultReply", False),
                "ListBackend": ("BackendInfo", "BackendStatus", False),
                "ReloadModelOnBackend": ("LoadRequest", "ResultReply", False),
                "TerminateBackend": ("BackendInfo", "ResultReply", False),
                "CreateAndLoadModel": ("FullLoadRequest", "ResultReply", False),
                "CreateAndLoadModelV2": ("FullLoadRequestV2", "ResultReply", False)},
    "Model": {"ListModels": ("PingRequest", "ModelList", False),
              "CreateModel": ("ModelInfo", "ResultReply", False),
              "DistroConfig": ("ModelInfo", "ResultReply", False),
              "DeleteModel": ("ModelInfo", "ResultReply", False),
              "ExportModelImage": ("ModelInfo", "ResultReply", False),
              "ImportModelDistro": ("ModelInfo", "ResultReply", False),
              "ImportModelDistroV2": ("ModelInfoBrief", "ResultReply", False)},
    "Exchange": {"UploadBin": ("BinData", "BinData", True),
                 "DownloadBin": ("BinData", "BinData", True)},
    "Inference": {"InferenceLocal": ("InferRequest", "ResultReply", False),
                  "InferenceRemote": ("InferRequest", "ResultReply", False)},
    "Connectivity": {"Ping": ("PingRequest", "PingReply", False),
                     "ListNodeResources": ("PingRequest", "ResourcesReply", False)},
}
FILES = {"common": protocol.common_pb2, "backend": protocol.backend_pb2,
         "connectivity": protocol.connectivity_pb2, "exchange": protocol.exchange_pb2,
         "inference": protocol.inference_pb2, "model": protocol.model_pb2}


def _messages():
    found = {}
    for module in FILES.values():
        for name, desc in module.DESCRIPTOR.message_types_by_name.items():
            found[name] = desc
    return found


def test_every_file_is_in_package_trueno():
    for name, module in FILES.items():
        assert module.DESCRIPTOR.package == "trueno", name
        assert module.DESCRIPTOR.name == f"{name}.proto"


def test_messages_and_field_numbers_match_the_contract():
    found = _messages()
    assert set(found) == set(MESSAGES)
    for message, fields in MESSAGES.items():
        desc = found[message]
        assert set(desc.fields_by_name) == set(fields), message
        for field, spec in fields.items():
            f = desc.fields_by_name[field]
            assert f.number == spec[0], f"{message}.{field} number"
            assert f.type == spec[1], f"{message}.{field} type"
            repeated = f.label == F.LABEL_REPEATED if hasattr(f, "label") else f.is_repeated
            assert repeated == (REP in spec), f"{message}.{field} repeated"
            if f.type == M:
                assert f.message_type.full_name == "trueno." + MESSAGE_TYPES[(message, field)]


def test_services_and_rpcs_match_the_contract():
    services = {}
    for module in FILES.values():
        services.update(module.DESCRIPTOR.services_by_name)
    assert set(services) == set(SERVICES)
    for service, rpcs in SERVICES.items():
        desc = services[service]
        assert desc.full_name == f"trueno.{service}"
        assert set(desc.methods_by_name) == set(rpcs), service
        for rpc, (request, reply, streaming) in rpcs.items():
            method = desc.methods_by_name[rpc]
            assert method.input_type.full_name == f"trueno.{request}"
            assert method.output_type.full_name == f"trueno.{reply}"
            assert method.client_streaming == streaming and method.server_streaming == streaming

"""gRPC Model service: the bundle store, managed remotely."""

from __future__ import annotations

from aiserving.api.grpc.mapping import result
from aiserving.api.grpc.protocol import info_dict, model_info, model_pb2, model_pb2_grpc
from aiserving.errors import BadRequest, ModelInUse

# Legacy ResultReply codes of these rpcs (contract, section 3).
IMPORT_ERROR = 104
DELETE_ERROR = 105
UPDATE_ERROR = 112
RUNTIME_ERROR = 1  # CreateModel and ExportModelImage: the old product's code for them


class ModelService(model_pb2_grpc.ModelServicer):
    def __init__(self, node, catalog, uploads):
        self.node = node
        self.catalog = catalog
        self.uploads = uploads

    def ListModels(self, request, context):
        return model_pb2.ModelList(models=[
            model_info(r.to_dict(), f"{r.implhash}/{r.version}") for r in self.catalog.records()])

    def CreateModel(self, request, context):
        return result(RUNTIME_ERROR, lambda: self.catalog.create(info_dict(request)).fullhash)

    def DistroConfig(self, request, context):
        def update():
            # Repeated fields always arrive, empty when not meant: empty keeps the stored value.
            info = {k: v for k, v in info_dict(request).items() if v != []}
            return self.catalog.update_distro(info).disthash
        return result(UPDATE_ERROR, update)

    def DeleteModel(self, request, context):
        def delete():
            info = info_dict(request)
            if not info["version"]:
                # Not "the newest": a request that leaves the version out must not
                # delete whichever version happens to be newest.
                raise BadRequest("field 'version' is required to delete a model")
            implhash, version = self.catalog.resolve_ref(info)
            users = self.node.users_of(implhash, version)
            if users:
                raise ModelInUse(f"model {implhash}-{version} is in use by backend(s) "
                                 f"{', '.join(users)}: terminate them first")
            self.catalog.delete(implhash, version)
        return result(DELETE_ERROR, delete)

    def ExportModelImage(self, request, context):
        def export():
            implhash, version = self.catalog.resolve_ref(info_dict(request))
            self.catalog.export(implhash, version)
            return implhash  # the name DownloadBin takes
        return result(RUNTIME_ERROR, export)

    def ImportModelDistro(self, request, context):
        return result(IMPORT_ERROR, lambda: self._import(request))

    def ImportModelDistroV2(self, request, context):
        return result(IMPORT_ERROR, lambda: self._import(request))

    def _import(self, request) -> str:
        info = info_dict(request)
        archive = self.uploads.path(info["bundle"])
        try:
            return self.catalog.import_archive(archive, info).fullhash
        finally:
            self.uploads.discard(info["bundle"])

"""gRPC Exchange service: model archives in and out, in 2 MiB chunks."""

from __future__ import annotations

import hashlib
import logging

import grpc

from aiserving.api.grpc.protocol import exchange_pb2, exchange_pb2_grpc
from aiserving.api.grpc.uploads import CHUNK_BYTES
from aiserving.errors import AiservingError, TooLarge

log = logging.getLogger(__name__)

REFUSED = "-1"  # the legacy answer to an upload that breaks the rules


class ExchangeService(exchange_pb2_grpc.ExchangeServicer):
    def __init__(self, node, uploads, catalog):
        self.node = node
        self.uploads = uploads
        self.catalog = catalog

    def UploadBin(self, request_iterator, context):
        """Each chunk is answered with the upload id; a refused upload with "-1"."""
        upload = None
        try:
            for message in request_iterator:
                if upload is None:
                    upload = self.uploads.begin()
                try:
                    upload.add(message.pack.index, message.pack.block)
                except AiservingError as exc:
                    log.warning("upload %s refused: %s", upload.id, exc.message)
                    upload.close()
                    self.uploads.discard(upload.id)
                    upload = None
                    yield exchange_pb2.BinData(uuid=REFUSED)
                    if isinstance(exc, TooLarge):  # a byte limit: name it, as a status too
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
                    return
                yield exchange_pb2.BinData(uuid=upload.id, size=upload.size)
        finally:
            if upload is not None:
                upload.close()
                if not context.is_active():  # the client went away mid-upload
                    self.uploads.discard(upload.id)

    def DownloadBin(self, request_iterator, context):
        """Each request names an exported image (its implhash): its chunks, then size=0.

        Like the old product, one stream may ask for several images in turn.
        """
        for request in request_iterator:
            path = self.catalog.export_path(request.uuid)
            if path is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"no exported image {request.uuid!r}: call ExportModelImage first")
            yield from self._chunks(request.uuid, path)

    @staticmethod
    def _chunks(name: str, path):
        total = path.stat().st_size
        index = 0
        with open(path, "rb") as fh:
            while True:
                block = fh.read(CHUNK_BYTES)
                if not block:
                    break
                yield exchange_pb2.BinData(uuid=name, size=total, pack=exchange_pb2.Block(
                    index=index, hash=hashlib.md5(block).hexdigest(), block=block))
                index += 1
        yield exchange_pb2.BinData(uuid=name, size=0, pack=exchange_pb2.Block(index=index))

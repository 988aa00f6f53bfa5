"""Uploads of model archives (gRPC Exchange.UploadBin), in a private folder of the node.

Uploads land under `<storage>/run/uploads/` (mode 0700, names the node chose),
never in a shared /tmp path another user could pre-create or read. They are
removed once an import used them, or after `upload.ttl_s`.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid as uuidlib
from pathlib import Path

from aiserving.errors import BadRequest, ModelNotFound

log = logging.getLogger(__name__)

CHUNK_BYTES = 2 * 1024 * 1024  # the legacy protocol's chunk size
MAX_CHUNKS = 500
_ID = re.compile(r"[0-9a-f]{32}")


class Upload:
    """One upload in progress: chunks must come in order, none larger than 2 MiB."""

    def __init__(self, store: "UploadStore"):
        self.id = uuidlib.uuid4().hex
        self.path = store.folder / self.id
        self._fh = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self.chunks = 0
        self.size = 0
        self._next_index: int | None = None

    def add(self, index: int, block: bytes) -> None:
        if self.chunks >= MAX_CHUNKS:
            raise BadRequest(f"an upload may have at most {MAX_CHUNKS} chunks")
        if len(block) > CHUNK_BYTES:
            raise BadRequest(f"chunk {index} has {len(block)} bytes; at most {CHUNK_BYTES} are allowed")
        if self._next_index is not None and index != self._next_index:
            raise BadRequest(f"chunk {index} came where chunk {self._next_index} was expected")
        self._fh.write(block)
        self._next_index = index + 1
        self.chunks += 1
        self.size += len(block)

    def close(self) -> None:
        self._fh.close()


class UploadStore:
    def __init__(self, folder: Path, ttl_s: float):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.ttl_s = ttl_s

    def begin(self) -> Upload:
        self.sweep()
        return Upload(self)

    def path(self, upload_id: str) -> Path:
        """The finished upload with this id."""
        path = self.folder / upload_id
        if not _ID.fullmatch(upload_id or "") or not path.is_file():
            raise ModelNotFound(f"no upload {upload_id!r} (uploads are kept {self.ttl_s:.0f} s)")
        return path

    def discard(self, upload_id: str) -> None:
        if _ID.fullmatch(upload_id or ""):
            try:
                (self.folder / upload_id).unlink()
            except FileNotFoundError:
                pass

    def sweep(self) -> None:
        """Remove uploads older than the TTL."""
        cutoff = time.time() - self.ttl_s
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    log.info("removed expired upload %s", path.name)
            except FileNotFoundError:
                pass

"""Uploads of model archives (gRPC Exchange.UploadBin), in a private folder of the node.

Uploads land under `<storage>/run/uploads/` (mode 0700, names the node chose),
never in a shared /tmp path another user could pre-create or read. They are
removed once an import used them, or after `upload.ttl_s`: an older upload is
gone for an import even before the sweeper removes its file.

Bytes are bounded twice: one upload (`upload.max_bytes`) and all uploads held
on disk at once, in progress or finished and not yet imported
(`upload.max_total_bytes`). The sum is taken from the files themselves (left
over from an earlier run too), and each chunk is checked and written under one
lock, so two concurrent uploads cannot both squeeze past the bound.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid as uuidlib
from pathlib import Path

from aiserving.errors import AiservingError, BadRequest, ModelNotFound, TooLarge

log = logging.getLogger(__name__)

CHUNK_BYTES = 2 * 1024 * 1024  # the legacy protocol's chunk size
MAX_CHUNKS = 500
_ID = re.compile(r"[0-9a-f]{32}")


class Upload:
    """One upload in progress: chunks must come in order, none larger than 2 MiB."""

    def __init__(self, store: "UploadStore"):
        self.store = store
        self.id = uuidlib.uuid4().hex
        self.path = store.folder / self.id
        # Unbuffered: the file's size on disk is what the store counts.
        self._fh = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb",
                        buffering=0)
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
        self.store.write(self, block)
        self._next_index = index + 1
        self.chunks += 1
        self.size += len(block)

    def close(self) -> None:
        self._fh.close()


class UploadStore:
    def __init__(self, folder: Path, ttl_s: float, max_bytes: int = MAX_CHUNKS * CHUNK_BYTES,
                 max_total_bytes: int = 2 * 1024 ** 3):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()

    def begin(self) -> Upload:
        self.sweep()
        return Upload(self)

    def write(self, upload: Upload, block: bytes) -> None:
        """Append `block` to `upload`, unless that passes a byte limit (TooLarge)."""
        with self._lock:
            if upload.size + len(block) > self.max_bytes:
                raise TooLarge(f"an upload may hold at most {self.max_bytes} bytes "
                               "(upload.max_bytes)")
            held = self.held_bytes()
            if held + len(block) > self.max_total_bytes:
                raise TooLarge(f"uploads not yet imported hold {held} bytes; all together may "
                               f"hold at most {self.max_total_bytes} (upload.max_total_bytes): "
                               "import or wait for older uploads to expire, then retry")
            view = memoryview(block)
            try:
                while view:
                    view = view[upload._fh.write(view):]
            except OSError as exc:
                raise AiservingError(f"cannot store the upload: {exc.strerror}") from None

    def held_bytes(self) -> int:
        total = 0
        for path in self.folder.iterdir():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def path(self, upload_id: str) -> Path:
        """The finished upload with this id, if it has not expired."""
        path = self.folder / upload_id
        try:
            fresh = _ID.fullmatch(upload_id or "") and path.is_file() and \
                path.stat().st_mtime >= time.time() - self.ttl_s
        except FileNotFoundError:
            fresh = False
        if not fresh:
            raise ModelNotFound(f"no upload {upload_id!r} (uploads are kept {self.ttl_s:.0f} s)")
        return path

    def discard(self, upload_id: str) -> None:
        if _ID.fullmatch(upload_id or ""):
            try:
                (self.folder / upload_id).unlink()
            except FileNotFoundError:
                pass

    def sweep(self) -> None:
        """Remove uploads older than the TTL (by their last write)."""
        cutoff = time.time() - self.ttl_s
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    log.info("removed expired upload %s", path.name)
            except FileNotFoundError:
                pass

"""UploadStore: byte limits per upload and for all uploads held, under concurrency, and
lifetime (an expired upload is gone for an import before any sweep)."""

import os
import threading
import time

import pytest

from aiserving.errors import ModelNotFound, TooLarge
from aiserving.api.grpc.uploads import UploadStore


def test_one_upload_is_bounded(tmp_path):
    store = UploadStore(tmp_path / "up", ttl_s=60, max_bytes=10, max_total_bytes=100)
    upload = store.begin()
    upload.add(0, b"x" * 6)
    with pytest.raises(TooLarge, match="upload.max_bytes"):
        upload.add(1, b"x" * 5)
    assert upload.size == 6 and upload.path.stat().st_size == 6  # the refused block: unwritten
    upload.close()


def test_concurrent_uploads_never_pass_the_total(tmp_path):
    store = UploadStore(tmp_path / "up", ttl_s=60, max_bytes=10_000, max_total_bytes=5_000)
    refused = []

    def one():
        upload = store.begin()
        try:
            for index in range(20):
                upload.add(index, b"y" * 100)
        except TooLarge:
            refused.append(upload.id)
        finally:
            upload.close()

    threads = [threading.Thread(target=one) for _ in range(6)]  # 6 x 2000 wanted, 5000 allowed
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.held_bytes() == 5_000 and len(refused) >= 3


def test_an_expired_upload_is_gone_and_swept(tmp_path):
    store = UploadStore(tmp_path / "up", ttl_s=60)
    old, fresh = store.begin(), store.begin()
    for upload in (old, fresh):
        upload.add(0, b"z")
        upload.close()
    long_ago = time.time() - 61
    os.utime(old.path, (long_ago, long_ago))
    assert store.path(fresh.id) == fresh.path
    with pytest.raises(ModelNotFound, match="no upload"):
        store.path(old.id)
    store.sweep()
    assert not old.path.exists() and fresh.path.exists()
    with pytest.raises(ModelNotFound):
        store.path("../" + fresh.id)

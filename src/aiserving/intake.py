"""Taking inference requests in: the checks and the queueing both doors share.

The REST front and the gRPC Inference service refuse unusable input here,
before it takes a queue slot, and queue jobs the same way.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time

from PIL import Image, UnidentifiedImageError

from aiserving.broker import Broker
from aiserving.errors import InputError, NotReady


def check_image_path(path: str) -> None:
    if not isinstance(path, str) or not path:
        raise InputError("an absolute image path is required")
    if not os.path.isabs(path):
        raise InputError(f"path {path!r} is not absolute")
    if not os.path.isfile(path):
        raise InputError(f"no file at {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"file {path} is not readable by the node")
    try:
        with Image.open(path) as image:
            image.format  # the header alone tells; pixels are left to the bundle
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"file {path} is not an image") from None


def decode_image(text: str, kind: str, max_bytes: int) -> bytes:
    """Inline base64 image bytes, checked in memory (never written under a caller's name)."""
    if not text:
        raise InputError("field 'base64' (the image, base64-encoded) is empty")
    if len(text) > max_bytes * 4 // 3 + 4:
        raise InputError(f"the image is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("field 'base64' is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)):
            pass  # identifying the format is the check; pixels are left to the bundle
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"the decoded data is not an image (type {kind!r} was given)") from None
    return data


def submit(broker: Broker, backend: dict, uuid: str, *, path: str = "", image: bytes = b"",
           kind: str = "", reply: bool = False) -> None:
    """Queue one job on the stream of the model the backend serves."""
    serving = backend.get("serving")
    if not serving:
        raise NotReady(f"backend {backend['bid']} has no model running "
                       f"(status: {backend['switch']['status']})")
    fields: dict = {"uuid": uuid, "reply": "1" if reply else "0", "t": repr(time.time())}
    if image:
        fields["image"] = image
        fields["type"] = kind if kind.isalnum() else ""
    else:
        fields["path"] = path
    broker.enqueue(serving, fields)

"""Input checks and limits, made at the door and again in the worker.

The REST front and the gRPC Inference service refuse unusable input here,
before it takes a queue slot; the worker applies the same pixel limit.

Only cheap checks are made on the node's side: a path must be absolute and
name a readable regular file within the size limit. What the file holds is the
bundle's business -- vendors' bundles read raw sensor frames, `.npy` arrays and
formats OpenCV reads and Pillow does not -- unless the bundle declares in its
`modelext` that its input is a picture (`"input": "image"`): then a file Pillow
cannot identify is refused here, before it is queued.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import stat
import warnings

from PIL import Image, UnidentifiedImageError

from aiserving.errors import InputError


def limit_pixels(max_pixels: int) -> None:
    """Refuse images over `max_pixels` from their header, in this process.

    Pillow only warns between its limit and twice it; the warning is made an
    error so the limit is exact. OpenCV reads its limit from the environment
    when it is first imported, so this runs before any vendor code does.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))


def _identify(source) -> None:
    """Open the image header (pixels are left to the bundle)."""
    with Image.open(source) as image:
        image.format


def wants_image(backend: dict) -> bool:
    """Whether the bundle the backend runs declares picture input (`modelext` input "image")."""
    model = backend.get("model") or {}
    text = model.get("modelext") or ""
    if '"input"' not in text:  # most bundles: no parse on the request path
        return False
    try:
        ext = json.loads(text)
    except ValueError:
        return False
    return isinstance(ext, dict) and ext.get("input") == "image"


def check_input_path(path: str, backend: dict, max_bytes: int, roots: list[str]) -> None:
    """Cheap checks of an input file the caller names; nothing is read.

    The path, symlinks resolved, must lie under one of `roots`. Outside them, a
    missing file and an unreadable one all get the same answer, so a caller
    learns nothing about files it may not read.
    """
    if not isinstance(path, str) or not path:
        raise InputError("an absolute input file path is required")
    if not os.path.isabs(path):
        raise InputError(f"path {path!r} is not absolute")
    nothing = InputError(f"no readable input file at {path} within the node's input roots "
                         "(setting input.roots)")
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):  # ValueError: a NUL byte, or text no file name can hold
        raise nothing from None
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise nothing
    try:
        info = os.stat(real)
    except (OSError, ValueError):
        raise nothing from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a folder, device or FIFO)")
    if info.st_size > max_bytes:
        raise InputError(f"file {path} is larger than {max_bytes} bytes")
    if not os.access(real, os.R_OK):
        raise nothing
    if wants_image(backend):
        try:
            _identify(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"file {path} is refused: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise InputError(f"file {path} is not an image") from None


def decode_inline(text: str, kind: str, backend: dict, max_bytes: int) -> bytes:
    """Inline base64 input bytes, checked in memory (never written under a caller's name)."""
    if not text:
        raise InputError("field 'base64' (the input, base64-encoded) is empty")
    if len(text) > max_bytes * 4 // 3 + 4:
        raise InputError(f"the input is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("field 'base64' is not valid base64") from None
    if wants_image(backend):
        try:
            _identify(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"the image is refused: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise InputError(f"the decoded data is not an image (type {kind!r} was given)") from None
    return data


def check_image_bytes(data: bytes, backend: dict, max_bytes: int) -> str:
    """Checks of an inline image (Open Inference Protocol image form); returns its
    format for the temporary file's suffix ("" when Pillow does not know it)."""
    if len(data) > max_bytes:
        raise InputError(f"the input is larger than {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (image.format or "").lower()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"the image is refused: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        if wants_image(backend):
            raise InputError("the input is not an image") from None
        return ""  # the bundle's business: it may read formats Pillow does not

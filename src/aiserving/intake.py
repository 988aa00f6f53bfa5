"""Taking inference requests in: the checks and the queueing both doors share.

The REST front and the gRPC Inference service refuse unusable input here,
before it takes a queue slot, and queue jobs the same way.

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
import contextlib
import io
import json
import os
import stat
import time
import uuid as uuidlib
import warnings
from typing import Callable

from PIL import Image, UnidentifiedImageError

from aiserving.broker import Broker, StaleRoute
from aiserving.errors import AiservingError, InputError, NotReady

ROUTE_TRIES = 4  # routes change only on loads and status changes: a retry or two at most


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


def submit(broker: Broker, backend: dict, uuid: str, *, path: str = "", image: bytes = b"",
           kind: str = "", reply: bool = False, deadline: float | None = None,
           version: str | None = None, tensors: tuple[bytes, bytes] | None = None) -> None:
    """Queue one job on the stream of the model the backend serves.

    `deadline` (wall-clock time) is when its caller stops waiting: a worker that
    reaches the job later drops it unrun, answering a time-out. `version`: that of
    a cached route (`Broker.route`); StaleRoute if it changed. `tensors`: an Open
    Inference Protocol raw tensor job, `oip.pack`'s (header, data).
    """
    serving = backend.get("serving")
    if not serving:
        raise NotReady(f"backend {backend['bid']} has no model running "
                       f"(status: {backend['switch']['status']})")
    # A waiting caller's reply goes to its process's reply list (`Broker.wait_reply`).
    fields: dict = {"uuid": uuid, "reply": broker.reply_list if reply else "0",
                    "t": repr(time.time())}
    if deadline is not None:
        fields["deadline"] = repr(deadline)
    if tensors is not None:
        fields["oip"], fields["tensors"] = tensors
    elif image:
        fields["image"] = image
        fields["type"] = kind if kind.isalnum() else ""
    else:
        fields["path"] = path
    broker.enqueue(serving, fields, version)


def ask(broker: Broker, plan: Callable[[bool], tuple[dict, str, dict]], timeout: float,
        waiting=None) -> tuple[dict, str, bytes | None]:
    """Route one request, queue it and wait for its reply, as every waiting door does.

    `plan(fresh)` checks the request against a route and returns (route, the routes'
    version, the job's inputs as `submit` keywords); after a stale route it runs again
    with `fresh` True, so a reload under load routes again instead of queueing where
    nobody reads. `waiting`: the door's `WaitingLimit`, if it has one. Returns the
    route taken, the request's uuid and its reply (None past `timeout` s); an error
    reply is raised as the error it carries.
    """
    uuid = uuidlib.uuid4().hex
    for attempt in range(ROUTE_TRIES):
        route, version, job = plan(attempt > 0)
        slot = waiting.slot(route.get("serving")) if waiting else contextlib.nullcontext()
        try:
            with slot:
                submit(broker, route, uuid, reply=True, deadline=time.time() + timeout,
                       version=version, **job)
                reply = broker.wait_reply(uuid, timeout)
        except StaleRoute:
            continue  # the backend changed since the route was cached: nothing was queued
        if reply is not None and reply[:1] == b"E":
            raise AiservingError.from_wire(json.loads(reply[1:]))
        return route, uuid, reply
    raise NotReady("the node's backends are changing; retry shortly")

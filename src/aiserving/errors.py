"""One error hierarchy for the whole node.

Every error a caller can see is an `AiservingError`: it carries the legacy
`ResultReply.code` of the contract and an HTTP status. The REST front maps it
to a response in exactly one place (`api/rest/common.py`), the gRPC front in one
other. Errors cross process boundaries (worker -> redis -> front) as the small
dict made by `to_wire`, never as a traceback.
"""

from __future__ import annotations

import os
import re


class AiservingError(Exception):
    """Root of every error the node reports to a caller."""

    code = 1  # legacy ResultReply.code: runtime error
    http_status = 500

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_wire(self) -> dict:
        return {"kind": type(self).__name__, "code": self.code, "message": self.message}

    @staticmethod
    def from_wire(wire: dict) -> "AiservingError":
        cls = _BY_NAME.get(wire.get("kind", ""), AiservingError)
        return cls(str(wire.get("message", "unknown error")), code=wire.get("code"))


class ConfigError(AiservingError):
    """A setting has a value the node cannot start with."""


class BundleError(AiservingError):
    """A JSM bundle on disk is malformed (bad distros.json, missing file, ...)."""

    code = 104
    http_status = 422


class ModelNotFound(AiservingError):
    code = 104
    http_status = 404


class BackendNotFound(AiservingError):
    code = 109
    http_status = 404


class UnsupportedBackend(AiservingError):
    """The backend type is unknown, or its framework does not import here."""

    code = 106
    http_status = 400


class BackendLimit(AiservingError):
    """Backend settings out of limits (batchsize, inferprocnum)."""

    code = 100
    http_status = 400


class TooManyBackends(AiservingError):
    code = 101
    http_status = 409


class BackendRunning(AiservingError):
    """An identical backend already runs; the message is its bid (legacy code 102)."""

    code = 102
    http_status = 409


class BadFullhash(AiservingError):
    code = 103
    http_status = 400


class ModelLoadFailed(AiservingError):
    """A model did not come up on a backend (bad weights, preheat failure, time-out)."""

    code = 106
    http_status = 422


class ModelKeyError(AiservingError):
    """An encrypted model cannot be decrypted: a missing or wrong key, a damaged file."""

    code = 107
    http_status = 422


class ModelInUse(AiservingError):
    """A running backend uses the model: it cannot be deleted or replaced under it."""

    code = 105
    http_status = 409


class BadRequest(AiservingError):
    """The request itself is malformed (body, missing field)."""

    code = 110
    http_status = 400


class InputError(AiservingError):
    """The input of an inference cannot be used (missing file, not an image)."""

    code = 110
    http_status = 400


class ProcessingError(AiservingError):
    """The bundle's pre- or post-processing failed on this input."""

    code = 1
    http_status = 422


class InferenceError(AiservingError):
    """The framework failed to run the batch."""

    code = 1
    http_status = 500


class NotReady(AiservingError):
    """No model is loaded and running where the request was sent."""

    code = 109
    http_status = 503


class QueueFull(AiservingError):
    """The model's bounded queue is full: retry later."""

    code = 1
    http_status = 503


class TooLarge(AiservingError):
    """Over a byte limit the node keeps (uploads held on disk); nothing was kept."""

    code = 1
    http_status = 413


class RequestTimeout(AiservingError):
    code = 1
    http_status = 504


def hide_paths(text: str, storage: str | os.PathLike) -> str:
    """`text` fit for a caller: the node's own files under `storage` (inline inputs in
    `run/tmp`, the stored bundles, its state) named by what they are, not where they
    lie. The full text goes to the log."""
    root = re.escape(os.path.realpath(storage).rstrip(os.sep))
    text = re.sub(root + r"/run/tmp/[^\s'\"),]*", "<the inline input>", text)
    text = re.sub(root + r"/models/[0-9a-f]{32}/[^/\s'\"),]+", "<the bundle>", text)
    return re.sub(root + r"/(run|state|keys|uploads)\b", r"<storage>/\1", text)


_BY_NAME = {
    cls.__name__: cls
    for cls in (
        AiservingError, ConfigError, BundleError, ModelNotFound, BackendNotFound,
        UnsupportedBackend, BackendLimit, TooManyBackends, BackendRunning, BadFullhash,
        ModelLoadFailed, ModelKeyError, ModelInUse, BadRequest, InputError,
        ProcessingError, InferenceError, NotReady, QueueFull, RequestTimeout, TooLarge,
    )
}

"""The generated gRPC modules, and conversions between their messages and the node's dicts."""

from __future__ import annotations

import re

from aiserving.errors import BadFullhash, ConfigError

try:
    from aiserving.api.grpc.generated import (backend_pb2, backend_pb2_grpc, common_pb2,
                                              connectivity_pb2, connectivity_pb2_grpc,
                                              exchange_pb2, exchange_pb2_grpc, inference_pb2,
                                              inference_pb2_grpc, model_pb2, model_pb2_grpc)
except ImportError as exc:  # a source checkout where scripts/setup.sh has not run
    raise ConfigError(f"The gRPC modules are not generated ({exc}): run `bash scripts/setup.sh` "
                      "or `python scripts/gen_protos.py`.") from None

__all__ = ["backend_pb2", "backend_pb2_grpc", "common_pb2", "connectivity_pb2",
           "connectivity_pb2_grpc", "exchange_pb2", "exchange_pb2_grpc", "inference_pb2",
           "inference_pb2_grpc", "model_pb2", "model_pb2_grpc"]

_FULLHASH = re.compile(r"([0-9a-f]{32})-([A-Za-z0-9_.]+)")
_FIELDS = ("name", "labels", "head", "bone", "impl", "implhash", "version", "threshold",
           "mapping", "modelext", "disthash")


def model_info(record: dict | None, bundle: str = "") -> "model_pb2.ModelInfo":
    if not record:
        return model_pb2.ModelInfo()
    return model_pb2.ModelInfo(bundle=bundle, **{k: record.get(k) or _empty(k) for k in _FIELDS})


def info_dict(message) -> dict:
    """A ModelInfo or ModelInfoBrief as the dict the catalog takes (version from fullhash)."""
    out = {k: (list(getattr(message, k)) if k in ("labels", "threshold", "mapping")
               else getattr(message, k)) for k in _FIELDS}
    out["bundle"] = message.bundle
    if isinstance(message, model_pb2.ModelInfoBrief):
        implhash, version = split_fullhash(message.fullhash)
        if out["implhash"] and out["implhash"] != implhash:
            raise BadFullhash(f"fullhash {message.fullhash!r} does not match implhash "
                              f"{out['implhash']!r}")
        out["implhash"], out["version"] = implhash, version
    return out


def split_fullhash(fullhash: str) -> tuple[str, str]:
    match = _FULLHASH.fullmatch(fullhash or "")
    if not match:
        raise BadFullhash(f"fullhash {fullhash!r} is malformed: expected '<32 hex implhash>-<version>'")
    return match.group(1), match.group(2)


def _empty(key: str):
    return [] if key in ("labels", "threshold", "mapping") else ""

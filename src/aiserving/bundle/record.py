"""The model record of a JSM bundle (`distros.json`) and its hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from aiserving.errors import BundleError

_STRING_KEYS = ("name", "head", "bone", "impl", "implhash", "version", "disthash")
_LIST_KEYS = ("labels", "threshold", "mapping")


def implhash_of(labels: list[str], head: str, bone: str, impl: str) -> str:
    return hashlib.md5(("".join(labels) + head + bone + impl).encode("utf-8")).hexdigest()


def disthash_of(threshold: list[str], mapping: list[str]) -> str:
    return hashlib.md5(("".join(threshold) + "".join(mapping)).encode("utf-8")).hexdigest()


@dataclass
class DistroRecord:
    name: str
    labels: list[str]
    head: str
    bone: str
    impl: str
    implhash: str
    version: str
    threshold: list[str]
    mapping: list[str]
    disthash: str
    modelext: str = ""
    extra: dict = field(default_factory=dict)  # keys we do not know, kept on rewrite

    @property
    def backend_type(self) -> str:
        return self.impl.split(".", 1)[0]

    @property
    def model_type(self) -> str:
        return self.impl.split(".", 1)[1] if "." in self.impl else ""

    @property
    def fullhash(self) -> str:
        return f"{self.implhash}-{self.version}"

    @property
    def ext(self) -> dict:
        """`modelext` parsed (it is a JSON document inside a string)."""
        if not self.modelext:
            return {}
        return json.loads(self.modelext)

    @property
    def threshold_values(self) -> list[float]:
        return [float(t) for t in self.threshold]

    @classmethod
    def from_dict(cls, data: object, where: str = "distros.json") -> "DistroRecord":
        """Parse and validate; every complaint names the bad field."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be a JSON object")
        for key in _STRING_KEYS + _LIST_KEYS:
            if key not in data:
                raise BundleError(f"{where}: field '{key}' is missing")
        for key in _STRING_KEYS:
            if not isinstance(data[key], str):
                raise BundleError(f"{where}: field '{key}' must be a string")
        for key in _LIST_KEYS:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise BundleError(f"{where}: field '{key}' must be a list of strings")
        modelext = data.get("modelext", "")
        if not isinstance(modelext, str):
            raise BundleError(f"{where}: field 'modelext' must be a string holding JSON")
        if "." not in data["impl"] or not all(data["impl"].split(".", 1)):
            raise BundleError(f"{where}: field 'impl' must be '<backend type>.<model type>', "
                              f"got {data['impl']!r}")
        if not data["version"]:
            raise BundleError(f"{where}: field 'version' is empty")
        n = len(data["labels"])
        for key in ("threshold", "mapping"):
            if len(data[key]) != n:
                raise BundleError(f"{where}: field '{key}' has {len(data[key])} entries but "
                                  f"'labels' has {n}; they must be equal")
        for t in data["threshold"]:
            try:
                float(t)
            except ValueError:
                raise BundleError(f"{where}: field 'threshold' holds {t!r}, not a number") from None
        expected = implhash_of(data["labels"], data["head"], data["bone"], data["impl"])
        if data["implhash"] != expected:
            raise BundleError(f"{where}: field 'implhash' is {data['implhash']!r} but labels, "
                              f"head, bone and impl hash to {expected!r}")
        if modelext:
            try:
                ext = json.loads(modelext)
            except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: too deep
                raise BundleError(f"{where}: field 'modelext' is not valid JSON ({exc})") from None
            if not isinstance(ext, dict):
                raise BundleError(f"{where}: field 'modelext' must hold a JSON object")
        known = set(_STRING_KEYS + _LIST_KEYS + ("modelext",))
        return cls(
            **{k: data[k] for k in _STRING_KEYS + _LIST_KEYS}, modelext=modelext,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def create(cls, *, name: str, labels: list[str], head: str, bone: str, impl: str,
               version: str = "1", threshold: list[str] | None = None,
               mapping: list[str] | None = None, modelext: str | dict = "") -> "DistroRecord":
        """A new, consistent record with its hashes computed."""
        threshold = list(threshold) if threshold is not None else ["0.5"] * len(labels)
        mapping = list(mapping) if mapping is not None else list(labels)
        if isinstance(modelext, dict):
            modelext = json.dumps(modelext)
        return cls.from_dict({
            "name": name, "labels": list(labels), "head": head, "bone": bone, "impl": impl,
            "implhash": implhash_of(labels, head, bone, impl), "version": str(version),
            "threshold": threshold, "mapping": mapping,
            "disthash": disthash_of(threshold, mapping), "modelext": modelext,
        })

    def to_dict(self) -> dict:
        out = dict(self.extra)
        out.update({k: getattr(self, k) for k in _STRING_KEYS + _LIST_KEYS})
        out["modelext"] = self.modelext
        return out

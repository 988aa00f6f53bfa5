"""The bundle store: JSM bundles under `<storage>/models/<implhash>/<version>/`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiserving.bundle.record import DistroRecord
from aiserving.errors import BundleError, ModelKeyError, ModelNotFound

log = logging.getLogger(__name__)

HASH = re.compile(r"[0-9a-f]{32}")
# A folder name: never "." or "..", and short enough for any file system (255 bytes).
VERSION = re.compile(r"(?!\.+$)[A-Za-z0-9_.]{1,128}")


@dataclass(frozen=True)
class Bundle:
    """One model version on disk.

    `secret`: the AES key of an encrypted `model_core` (legacy format, contract
    section 5). `device_key`: the path of this device's private key, which opens
    the files of a sealed bundle (`bundle/sealed.py`). Backends and the vendor
    code loader read files through `read` or `readable_path`, which decrypt in
    memory, never to disk.
    """

    path: Path
    record: DistroRecord
    secret: bytes | None = field(default=None, repr=False)
    device_key: str | None = None

    @property
    def encrypted(self) -> bool:
        """Encrypted in the legacy format (a key came with the load request)."""
        return self.secret is not None

    def with_secret(self, secret: bytes | None) -> "Bundle":
        return replace(self, secret=secret)

    def with_device_key(self, path: str | None) -> "Bundle":
        return replace(self, device_key=path)

    def sealed_files(self) -> frozenset[str]:
        """The files `sealed.json` lists (a sealed bundle; empty otherwise)."""
        if not (self.path / "sealed.json").is_file():
            return frozenset()
        from aiserving.bundle import sealed  # only sealed bundles need cryptography

        return sealed.manifest(self.path)

    def is_sealed(self, name: str) -> bool:
        if name in self.sealed_files():
            return True
        from aiserving.bundle.sealed import MAGIC

        with open(self.file(name), "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC

    def read(self, name: str) -> bytes:
        """A bundle file's bytes, decrypted in memory when it is encrypted or sealed."""
        data = self.file(name).read_bytes()
        if self.secret is not None and name == "model_core":
            from aiserving.bundle.crypto import decrypt_legacy  # only encrypted loads need it

            return decrypt_legacy(data, self.secret)
        from aiserving.bundle.sealed import MAGIC

        if data[:len(MAGIC)] == MAGIC or name in self.sealed_files():
            return self._unseal(data, name)
        if self.secret is not None:
            raise BundleError(f"bundle {self.fullhash}: only model_core is encrypted in the "
                              f"legacy format; this backend needs {name} (not encrypted)")
        return data

    def _unseal(self, data: bytes, name: str) -> bytes:
        from aiserving.bundle.sealed import DeviceKey

        if not self.device_key:
            raise ModelKeyError(f"bundle {self.fullhash}: {name} is sealed and no device key "
                                "is configured (crypto.device_key)")
        try:
            return DeviceKey.load(self.device_key).open(data, name)
        except ModelKeyError as exc:
            raise ModelKeyError(f"bundle {self.fullhash}: {exc.message}") from None

    def readable_path(self, name: str) -> str:
        """A path a framework can open: the file itself, or for an encrypted or sealed
        file an anonymous in-memory file holding the plaintext."""
        if (self.secret is None or name != "model_core") and not self.is_sealed(name):
            return str(self.file(name))
        from aiserving.bundle.crypto import memory_file

        return memory_file(self.read(name), name.replace("/", "_"))

    def refuse_encrypted(self, why: str) -> None:
        if self.secret is not None:
            raise BundleError(f"bundle {self.fullhash}: an encrypted model cannot be loaded "
                              f"here: {why}")

    @property
    def fullhash(self) -> str:
        return self.record.fullhash

    def file(self, name: str, required: bool = True) -> Path:
        path = self.path / name
        if required and not path.is_file():
            raise BundleError(f"bundle {self.fullhash}: file '{name}' is missing")
        return path

    def preheat_file(self) -> Path | None:
        """The bundle's own warm-up input, if it carries one.

        `modelext` `"preheat": "<file in the bundle folder>"` names it; otherwise a
        file named `preheat.<anything>` in the bundle folder is taken (the first by
        name). A bundle whose pre-processing reads something other than pictures
        warms up on what it reads.
        """
        named = self.record.ext.get("preheat")
        if named:
            path = (self.path / str(named)).resolve()
            if not path.is_relative_to(self.path.resolve()) or not path.is_file():
                raise BundleError(f"bundle {self.fullhash}: modelext 'preheat' names "
                                  f"{named!r}, which is not a file in the bundle folder")
            return path
        found = sorted(p for p in self.path.glob("preheat.*") if p.is_file())
        return found[0] if found else None


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class BundleStore:
    def __init__(self, storage: str | Path):
        self.root = Path(storage) / "models"

    def load(self, implhash: str, version: str) -> Bundle:
        """The bundle of one model version, validated, vendor files included."""
        bundle = Bundle(self.root / implhash / version, self.record(implhash, version))
        bundle.file("pre_dataprocess.py")
        bundle.file("post_dataprocess.py")
        return bundle

    def record(self, implhash: str, version: str) -> DistroRecord:
        """The validated distros.json of one stored model version."""
        if not HASH.fullmatch(implhash) or not VERSION.fullmatch(version):
            raise ModelNotFound(f"no model {implhash}/{version}: not a valid implhash/version")
        path = self.root / implhash / version
        if not path.is_dir():
            raise ModelNotFound(f"no model {implhash}/{version} in {self.root}")
        where = f"{implhash}/{version}/distros.json"
        try:
            data = json.loads((path / "distros.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"{where}: file is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{where}: not valid JSON ({exc})") from None
        record = DistroRecord.from_dict(data, where)
        if record.implhash != implhash or record.version != version:
            raise BundleError(f"{where}: records {record.implhash}/{record.version} but is "
                              f"stored as {implhash}/{version}")
        return record

    def versions(self, implhash: str) -> list[str]:
        folder = self.root / implhash
        if not HASH.fullmatch(implhash) or not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=_version_key)

    def all(self) -> list[Bundle]:
        """Every valid bundle; malformed ones are logged and left out."""
        out = []
        if not self.root.is_dir():
            return out
        for implhash in sorted(p.name for p in self.root.iterdir()):
            for version in self.versions(implhash):
                try:
                    out.append(self.load(implhash, version))
                except BundleError as exc:
                    log.warning("skipping malformed bundle: %s", exc.message)
        return out

    def resolve(self, ref: str) -> Bundle:
        """Find a model by fullhash, `implhash/version`, implhash (newest version) or name."""
        ref = (ref or "").strip()
        if not ref:
            raise ModelNotFound("no model given")
        for sep in ("/", "-"):
            head, _, tail = ref.partition(sep)
            if tail and HASH.fullmatch(head):
                return self.load(head, tail)
        if HASH.fullmatch(ref):
            versions = self.versions(ref)
            if not versions:
                raise ModelNotFound(f"no model {ref} in {self.root}")
            return self.load(ref, versions[-1])
        named = [b for b in self.all() if b.record.name == ref]
        if not named:
            raise ModelNotFound(f"no model named {ref!r} in {self.root}")
        if len({b.record.implhash for b in named}) > 1:
            raise ModelNotFound(f"model name {ref!r} is ambiguous: give its implhash "
                                f"({', '.join(sorted({b.record.implhash for b in named}))})")
        return max(named, key=lambda b: _version_key(b.record.version))

    def write(self, record: DistroRecord, files: dict[str, bytes | str]) -> Bundle:
        """Store a new bundle version (used by the demo and the bundle tools)."""
        path = self.root / record.implhash / record.version
        if path.exists():
            raise BundleError(f"model {record.implhash}/{record.version} already exists")
        path.mkdir(parents=True)
        for name, content in files.items():
            mode = "w" if isinstance(content, str) else "wb"
            with open(path / name, mode) as fh:
                fh.write(content)
        (path / "distros.json").write_text(json.dumps(record.to_dict(), indent=2), encoding="utf-8")
        return self.load(record.implhash, record.version)

"""The model catalog: create, configure, delete, export and import stored models.

This is the write side of the bundle store, behind the gRPC Model service. Every
change becomes visible in one step: a new model version is built in a private
folder next to `models/` and renamed into place, a rewritten `distros.json`
replaces the old one with `os.replace`, and a deleted version is first moved
aside. A reader therefore never sees half a bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from aiserving.bundle.archive import atomic_output, pack_export, safe_extract
from aiserving.bundle.record import DistroRecord, disthash_of, implhash_of
from aiserving.bundle.store import HASH, VERSION, BundleStore
from aiserving.errors import BundleError, ModelNotFound

log = logging.getLogger(__name__)

_VENDOR_FILES = ("pre_dataprocess.py", "post_dataprocess.py")
# Files of an uploaded archive that describe the model: the caller's info replaces them.
_ARCHIVE_RECORDS = ("configs.json", "distros.json")


class ModelCatalog:
    def __init__(self, store: BundleStore, work_dir: Path, max_import_bytes: int,
                 max_labels: int = 10_000, max_record_bytes: int = 1024 ** 2,
                 max_import_entries: int = 10_000, max_import_ratio: float = 200.0):
        self.store = store
        self.work_dir = Path(work_dir)
        self.max_import_bytes = max_import_bytes
        self.max_labels = max_labels
        self.max_record_bytes = max_record_bytes
        self.max_import_entries = max_import_entries
        self.max_import_ratio = max_import_ratio
        self.exports_dir = self.work_dir / "exports"
        # Beside models/, so moving a finished bundle in is a rename on one filesystem.
        self.tmp_dir = self.store.root.parent / ".import-tmp"
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------

    def records(self) -> list[DistroRecord]:
        """Every stored model version whose distros.json is valid (vendor files not checked)."""
        out: list[DistroRecord] = []
        if not self.store.root.is_dir():
            return out
        for implhash in sorted(p.name for p in self.store.root.iterdir()):
            for version in self.store.versions(implhash):
                try:
                    out.append(self.store.record(implhash, version))
                except (BundleError, ModelNotFound) as exc:
                    log.warning("skipping malformed model %s/%s: %s", implhash, version, exc.message)
        return out

    def resolve_ref(self, info: dict) -> tuple[str, str]:
        """(implhash, version) a request names: implhash given or computed from
        labels/head/bone/impl; an empty version means the newest stored one."""
        implhash = _text(info, "implhash")
        if not implhash:
            fields = _model_fields(info)
            implhash = implhash_of(fields["labels"], fields["head"], fields["bone"], fields["impl"])
        _check_implhash(implhash)
        version = _text(info, "version")
        if not version:
            versions = self.store.versions(implhash)
            if not versions:
                raise ModelNotFound(f"no model {implhash} in {self.store.root}")
            version = versions[-1]
        _check_version(version)
        return implhash, version

    # -- changing --------------------------------------------------------------------

    def create(self, info: dict) -> DistroRecord:
        """A new model version holding only its distros.json; the implhash is computed."""
        record = self._bounded(_new_record(info, implhash_required=False))
        with self._lock:
            self._refuse_existing(record)
            staging = self._staging()
            try:
                folder = staging / "bundle"
                folder.mkdir()
                _write_json(folder / "distros.json", record.to_dict())
                self._move_in(folder, record)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        log.info("created model %s (%s)", record.fullhash, record.name)
        return record

    def update_distro(self, info: dict) -> DistroRecord:
        """Replace threshold, mapping and (when given) modelext of a stored version."""
        implhash, version = self.resolve_ref(info)
        with self._lock:
            current = self.store.record(implhash, version)
            data = current.to_dict()
            # A key that is absent keeps its value; a given list replaces it, even an
            # empty one, so a wrong length is reported rather than silently kept.
            for key in ("threshold", "mapping"):
                if info.get(key) is not None:
                    data[key] = _string_list(info, key)
            modelext = info.get("modelext")
            if modelext:
                data["modelext"] = json.dumps(modelext) if isinstance(modelext, dict) else modelext
            data["disthash"] = disthash_of(data["threshold"], data["mapping"])
            record = self._bounded(DistroRecord.from_dict(data, f"model {implhash}/{version}"))
            _write_json(self.store.root / implhash / version / "distros.json", record.to_dict())
        log.info("updated distro of model %s (disthash %s)", record.fullhash, record.disthash)
        return record

    def delete(self, implhash: str, version: str) -> None:
        """Remove one model version, and its implhash folder once that is empty."""
        _existing_ref(implhash, version)
        folder = self.store.root / implhash / version
        with self._lock:
            if folder.is_symlink():
                folder.unlink()  # only the link: what it points at is not ours
            elif not folder.is_dir():
                raise ModelNotFound(f"no model {implhash}/{version} in {self.store.root}")
            else:
                # Moved aside first: a reader sees the whole bundle or none of it.
                staging = self._staging()
                try:
                    os.rename(folder, staging / "deleted")
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            try:
                (self.store.root / implhash).rmdir()
            except OSError:
                pass  # other versions remain
        log.info("deleted model %s-%s", implhash, version)

    # -- moving between nodes --------------------------------------------------------

    def export(self, implhash: str, version: str) -> Path:
        """Pack a stored version as `<work_dir>/exports/<implhash>.tar.gz`."""
        _existing_ref(implhash, version)
        record = self.store.record(implhash, version)
        out = pack_export(self.store.root / implhash / version, record,
                          self.exports_dir / f"{implhash}.tar.gz")
        log.info("exported model %s to %s", record.fullhash, out)
        return out

    def export_path(self, implhash: str) -> Path | None:
        """The export file of an implhash, if one was made (the DownloadBin uuid)."""
        if not isinstance(implhash, str) or not HASH.fullmatch(implhash):
            return None
        path = self.exports_dir / f"{implhash}.tar.gz"
        return path if path.is_file() else None

    def import_archive(self, archive: Path, info: dict) -> DistroRecord:
        """Store an uploaded bundle archive as `<implhash>/<version>` with the distro in `info`."""
        record = self._bounded(_new_record(info, implhash_required=True))
        self._refuse_existing(record, placeholder_ok=True)
        staging = self._staging()
        try:
            unpacked = staging / "unpacked"
            safe_extract(Path(archive), unpacked, self.max_import_bytes,
                         max_entries=self.max_import_entries, max_ratio=self.max_import_ratio)
            content = _content_folder(unpacked)
            for name in _ARCHIVE_RECORDS:
                _remove(content / name)
            for name in _VENDOR_FILES:
                if not (content / name).is_file():
                    raise BundleError(f"archive for model {record.fullhash}: file '{name}' "
                                      f"is missing")
            _write_json(content / "distros.json", record.to_dict())
            with self._lock:
                self._refuse_existing(record, placeholder_ok=True)
                target = self.store.root / record.implhash / record.version
                if os.path.lexists(target):  # CreateModel's placeholder, checked above
                    shutil.rmtree(target)
                self._move_in(content, record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("imported model %s (%s)", record.fullhash, record.name)
        return record

    # -- helpers ---------------------------------------------------------------------

    def _bounded(self, record: DistroRecord) -> DistroRecord:
        """Refuse a record a client could grow without bound: every ListModels answer
        carries every record."""
        if len(record.labels) > self.max_labels:
            raise BundleError(f"model info has {len(record.labels)} labels; at most "
                              f"{self.max_labels} are accepted (model.max_labels)")
        size = len(json.dumps(record.to_dict()).encode("utf-8"))
        if size > self.max_record_bytes:
            raise BundleError(f"model info is {size} bytes as distros.json; at most "
                              f"{self.max_record_bytes} are accepted (model.max_record_bytes)")
        return record

    def _refuse_existing(self, record: DistroRecord, placeholder_ok: bool = False) -> None:
        """Refuse a version that exists -- except, for an import, the placeholder that
        CreateModel makes (a folder holding only distros.json): the import fills it."""
        target = self.store.root / record.implhash / record.version
        if not os.path.lexists(target):
            return
        if placeholder_ok and _is_placeholder(target):
            return
        raise BundleError(f"model {record.implhash}/{record.version} already exists "
                          f"(field 'version')")

    def _staging(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp_dir))

    def _move_in(self, folder: Path, record: DistroRecord) -> None:
        parent = self.store.root / record.implhash
        made_parent = not parent.exists()
        parent.mkdir(parents=True, exist_ok=True)
        try:
            # Caller holds the lock and checked the target is absent; rename(2) would
            # still refuse a non-empty target folder.
            os.rename(folder, parent / record.version)
        except OSError as exc:
            if made_parent:
                try:
                    parent.rmdir()
                except OSError:
                    pass
            raise BundleError(f"cannot store model {record.fullhash}: {exc}") from None


def _text(info: dict, key: str, default: str = "") -> str:
    value = info.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BundleError(f"model info: field '{key}' must be a string")
    # Not stripped: head, bone and impl enter the implhash exactly as given.
    return value or default


def _string_list(info: dict, key: str) -> list[str]:
    value = info.get(key)
    # A lone string would otherwise turn into a list of its characters.
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise BundleError(f"model info: field '{key}' must be a list of strings")
    items = list(value)
    if not all(isinstance(x, str) for x in items):
        raise BundleError(f"model info: field '{key}' must be a list of strings")
    return items


def _model_fields(info: dict) -> dict:
    """labels, head, bone, impl: what the implhash is made of, all required."""
    if not isinstance(info, dict):
        raise BundleError("model info must be an object")
    for key in ("labels", "head", "bone", "impl"):
        if info.get(key) is None:
            raise BundleError(f"model info: field '{key}' is missing")
    return {"labels": _string_list(info, "labels"), "head": _text(info, "head"),
            "bone": _text(info, "bone"), "impl": _text(info, "impl")}


def _new_record(info: dict, implhash_required: bool) -> DistroRecord:
    fields = _model_fields(info)
    computed = implhash_of(fields["labels"], fields["head"], fields["bone"], fields["impl"])
    given = _text(info, "implhash")
    if implhash_required and not given:
        raise BundleError("model info: field 'implhash' is required")
    if given and given != computed:
        raise BundleError(f"model info: field 'implhash' is {given!r} but labels, head, bone "
                          f"and impl hash to {computed!r}")
    version = _text(info, "version", "1")
    _check_version(version)
    # An empty repeated field is how gRPC says "not given": take the defaults then.
    threshold = _string_list(info, "threshold") if info.get("threshold") else None
    mapping = _string_list(info, "mapping") if info.get("mapping") else None
    modelext = info.get("modelext") or ""
    if not isinstance(modelext, (str, dict)):
        raise BundleError("model info: field 'modelext' must be a string holding JSON")
    name = _text(info, "name")
    return DistroRecord.create(name=name, labels=fields["labels"], head=fields["head"],
                               bone=fields["bone"], impl=fields["impl"], version=version,
                               threshold=threshold, mapping=mapping, modelext=modelext)


def _existing_ref(implhash: str, version: str) -> None:
    """A malformed reference names no stored model."""
    try:
        _check_implhash(implhash)
        _check_version(version)
    except BundleError as exc:
        raise ModelNotFound(f"no model {implhash}/{version}: {exc.message}") from None


def _check_implhash(implhash: str) -> None:
    if not isinstance(implhash, str) or not HASH.fullmatch(implhash):
        raise BundleError(f"field 'implhash' must be 32 lowercase hex digits, got {implhash!r}")


def _check_version(version: str) -> None:
    # "." and ".." match the character class but name the parent folders.
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise BundleError(f"field 'version' must be 1 to 128 letters, digits, '_' or '.', "
                          f"and not only dots; got {version!r}")


def _content_folder(unpacked: Path) -> Path:
    # Exports (ours and the old product's) wrap the bundle in one `<implhash>/` folder.
    entries = list(unpacked.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return unpacked


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _write_json(path: Path, data: dict) -> None:
    # mkstemp makes 0600; distros.json was always world-readable.
    with atomic_output(path, 0o644) as fh:
        fh.write(json.dumps(data, indent=2).encode("utf-8"))


def _is_placeholder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and \
        [p.name for p in folder.iterdir()] == ["distros.json"]

"""A bundle on this machine, as a client sends it to a node: a folder or an archive.

What `aiserving push` and `bundle pack` read before anything goes over the wire,
so a folder that is no bundle is refused here with its reason, not by the node.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from aiserving.bundle.record import DistroRecord
from aiserving.errors import BundleError

_VENDOR_FILES = ("pre_dataprocess.py", "post_dataprocess.py")  # what an import requires
_RECORDS = ("configs.json", "distros.json")  # an export's record, and a bundle folder's


def read_bundle(folder: Path) -> DistroRecord:
    """A bundle folder's record, with the files an import needs checked."""
    folder = Path(folder)
    distros = folder / "distros.json"
    if not distros.is_file():
        raise BundleError(f"{folder} is not a bundle folder (no distros.json)")
    try:
        data = json.loads(distros.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{distros}: cannot be read as JSON ({exc})") from None
    record = DistroRecord.from_dict(data, str(distros))
    for name in _VENDOR_FILES:
        if not (folder / name).is_file():
            raise BundleError(f"{folder}: file '{name}' is missing")
    return record


def read_archive_record(archive: Path) -> dict:
    """The model record inside a bundle archive (`configs.json` of an export, or a
    `distros.json`), at its top or in its one top folder; the node checks the rest."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.isreg() and 0 < len(parts) <= 2 and parts[-1] in _RECORDS:
                    data = json.load(tar.extractfile(member))
                    if isinstance(data, dict):
                        return data
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise BundleError(f"{archive}: not a bundle archive ({exc})") from None
    raise BundleError(f"{archive}: no configs.json or distros.json in the archive")

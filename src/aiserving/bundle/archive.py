"""Bundle archives: unpack an uploaded tar safely, pack a bundle for export.

An uploaded archive is untrusted: `safe_extract` checks every entry before it
writes a single byte, so a refused archive leaves nothing behind, and nothing
it accepts can reach outside its target folder. The checks are ours; Python's
`filter="data"` is added where it exists as a second line of defence only.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from aiserving.bundle.record import DistroRecord
from aiserving.errors import BundleError

_GZIP_MAGIC = b"\x1f\x8b"
# Fields of distros.json that belong to one node's deployment, not to the model image.
_NOT_EXPORTED = ("threshold", "mapping", "disthash")
# Files a bundle folder holds that the export writes itself or that are derived.
_SKIPPED_FILES = ("distros.json", "configs.json")
_SKIPPED_DIRS = ("__pycache__",)
# Python 3.11.4+ (and 3.8.17+/3.9.17+/3.10.12+) have extraction filters.
_HAS_FILTERS = hasattr(tarfile, "data_filter")


def safe_extract(archive: Path, dest: Path, max_bytes: int, *, max_entries: int = 10_000,
                 max_ratio: float = 200.0) -> None:
    """Unpack a plain or gzip tar into `dest` (absent or empty), refusing unsafe entries.

    Also refused before anything is written: more than `max_entries` entries, more
    than `max_bytes` unpacked, or more than `max_ratio` unpacked bytes per archive
    byte (a small archive that unpacks to a disk-filling one).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise BundleError(f"cannot extract into {dest}: it exists and is not an empty folder")
    with _open_tar(archive) as tar:
        members = _read_members(tar, archive, max_entries)
        total = _check_members(members, max_bytes)
        packed = max(archive.stat().st_size, 1)
        if total > max_ratio * packed:
            raise BundleError(f"archive {archive.name}: {packed} bytes unpack to {total}, more "
                              f"than {max_ratio:.0f} times its size: refused as an archive bomb")
        for member in members:
            _neutralise_owner_and_mode(member)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        try:
            if _HAS_FILTERS:
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
        except BaseException as exc:
            # Half an archive is no bundle: leave the target as it was found.
            _empty(dest, remove=created)
            if isinstance(exc, (tarfile.TarError, OSError, EOFError, zlib.error)):
                raise BundleError(f"archive {archive.name}: extraction failed ({exc})") from None
            raise


def pack_export(bundle_path: Path, record: DistroRecord, out: Path) -> Path:
    """Write `out` (`<implhash>.tar.gz`): the bundle's files under `<implhash>/`, with
    `configs.json` in place of `distros.json` (no threshold, mapping or disthash)."""
    bundle_path, out = Path(bundle_path), Path(out)
    if not bundle_path.is_dir():
        raise BundleError(f"cannot export {bundle_path}: not a folder")
    top = record.implhash
    configs = {k: v for k, v in record.to_dict().items() if k not in _NOT_EXPORTED}
    configs_bytes = json.dumps(configs, indent=2).encode("utf-8")
    entries = _bundle_entries(bundle_path)
    entries.append(("configs.json", None))
    entries.sort(key=lambda entry: entry[0])

    # gzip header without a name or time, so one bundle always packs to the same bytes.
    with atomic_output(out) as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_plain_info(tarfile.TarInfo(top), tarfile.DIRTYPE, 0o755,
                                bundle_path.stat().st_mtime))
        for rel, link in entries:
            name = f"{top}/{rel}"
            if rel == "configs.json" and link is None:
                info = tarfile.TarInfo(name)
                info.size = len(configs_bytes)
                distros = bundle_path / "distros.json"
                mtime = distros.stat().st_mtime if distros.is_file() else 0
                tar.addfile(_plain_info(info, tarfile.REGTYPE, 0o644, mtime),
                            io.BytesIO(configs_bytes))
                continue
            path = bundle_path / rel
            if link is not None:
                info = tarfile.TarInfo(name)
                info.linkname = link
                tar.addfile(_plain_info(info, tarfile.SYMTYPE, 0o777, path.lstat().st_mtime))
            elif path.is_dir():
                tar.addfile(_plain_info(tarfile.TarInfo(name), tarfile.DIRTYPE, 0o755,
                                        path.stat().st_mtime))
            else:
                st = path.stat()
                info = tarfile.TarInfo(name)
                info.size = st.st_size
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as fh:
                    tar.addfile(_plain_info(info, tarfile.REGTYPE, mode, st.st_mtime), fh)
    return out


@contextlib.contextmanager
def atomic_output(path: Path, mode: int | None = None):
    """A binary file that appears at `path` whole, or not at all (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it visible: power cuts
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        with open(archive, "rb") as fh:
            magic = fh.read(2)
        # Only the two formats the contract knows; "r:*" would also take bz2/xz/lzma.
        return tarfile.open(archive, "r:gz" if magic == _GZIP_MAGIC else "r:")
    except FileNotFoundError:
        raise BundleError(f"archive {archive} does not exist") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"{archive.name}: not a tar archive ({exc})") from None


def _read_members(tar: tarfile.TarFile, archive: Path, max_entries: int) -> list[tarfile.TarInfo]:
    # Reading the whole member list first also catches a truncated or corrupt stream
    # before anything is written; counting as it goes stops an archive of millions of
    # entries before it fills the memory.
    members = []
    try:
        for member in tar:
            members.append(member)
            if len(members) > max_entries:
                raise BundleError(f"{archive.name}: more than {max_entries} entries "
                                  "(import.max_entries)")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"{archive.name}: not a tar archive or damaged ({exc})") from None
    return members


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _check_members(members: list[tarfile.TarInfo], max_bytes: int) -> int:
    """Refuse unsafe entries; returns the unpacked bytes of the regular files."""
    symlinks = {"/".join(_parts(m.name)) for m in members if m.issym()}
    kinds: dict[str, str] = {}
    total = 0
    for member in members:
        name = member.name
        if name.startswith("/"):
            raise BundleError(f"archive entry {name!r}: absolute path")
        if ".." in name.split("/"):
            raise BundleError(f"archive entry {name!r}: '..' in the path")
        parts = _parts(name)
        key = "/".join(parts)
        if not parts and not member.isdir():
            raise BundleError(f"archive entry {name!r}: empty name")
        # A link used as a folder would carry later entries wherever it points.
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise BundleError(f"archive entry {name!r}: its path goes through the symbolic "
                                  f"link {'/'.join(parts[:i])!r}")
        kind = "dir" if member.isdir() else "other"
        if key in kinds and not (kind == "dir" and kinds[key] == "dir"):
            raise BundleError(f"archive entry {name!r}: appears more than once")
        if member.ischr():
            raise BundleError(f"archive entry {name!r}: character device")
        if member.isblk():
            raise BundleError(f"archive entry {name!r}: block device")
        if member.isfifo():
            raise BundleError(f"archive entry {name!r}: FIFO (named pipe)")
        if member.issym():
            _check_symlink(member, parts, symlinks)
        elif member.islnk():
            _check_hardlink(member, kinds)
        elif member.isreg():
            total += member.size
            if total > max_bytes:
                raise BundleError(f"archive entry {name!r}: the archive holds more total bytes "
                                  f"than the limit ({total} so far, limit {max_bytes})")
        elif not member.isdir():
            raise BundleError(f"archive entry {name!r}: unsupported entry type {member.type!r}")
        kinds[key] = "file" if member.isreg() else kind
    return total


def _check_symlink(member: tarfile.TarInfo, parts: list[str], symlinks: set[str]) -> None:
    target = member.linkname
    if not target or target.startswith("/"):
        raise BundleError(f"archive entry {member.name!r}: symbolic link to {target!r} "
                          f"points outside the archive")
    # Walk the target from the link's folder. Going through another link is refused,
    # since its real place is only known on disk and `x -> .` then `y -> x/..` escapes.
    where = parts[:-1]
    steps = target.split("/")
    for i, step in enumerate(steps):
        if step in ("", "."):
            continue
        if step == "..":
            if not where:
                raise BundleError(f"archive entry {member.name!r}: symbolic link to {target!r} "
                                  f"points outside the archive")
            where.pop()
            continue
        where.append(step)
        if "/".join(where) in symlinks and i < len(steps) - 1:
            raise BundleError(f"archive entry {member.name!r}: symbolic link to {target!r} "
                              f"goes through another link")


def _check_hardlink(member: tarfile.TarInfo, kinds: dict[str, str]) -> None:
    target = member.linkname
    if not target or target.startswith("/") or ".." in target.split("/"):
        raise BundleError(f"archive entry {member.name!r}: hard link to {target!r} "
                          f"points outside the archive")
    # Only to a file the archive itself brought, before this entry: then the link can
    # only ever join two files inside the target folder.
    if kinds.get("/".join(_parts(target))) != "file":
        raise BundleError(f"archive entry {member.name!r}: hard link to {target!r}, which is "
                          f"not a regular file earlier in the archive")


def _neutralise_owner_and_mode(member: tarfile.TarInfo) -> None:
    # Without the data filter tarfile would apply setuid bits, odd modes and, as root,
    # the archive's owners; a bundle needs none of that.
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""
    if member.isdir():
        member.mode = (member.mode & 0o755) | 0o700
    elif member.isreg():
        member.mode = (member.mode & 0o755) | 0o600


def _empty(dest: Path, remove: bool) -> None:
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _bundle_entries(root: Path) -> list[tuple[str, str | None]]:
    """(relative path, symlink target or None) of everything the export carries."""
    real_root = os.path.realpath(root)
    out: list[tuple[str, str | None]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        rel_folder = os.path.relpath(folder, root)
        for name in dirs + sorted(files):
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if rel_folder == "." and name in _SKIPPED_FILES:
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path):
                out.append((rel, _inside_link(path, rel, real_root)))
            elif os.path.isdir(path) or os.path.isfile(path):
                out.append((rel, None))
            else:
                raise BundleError(f"cannot export {root}: '{rel}' is not a file or folder")
    return out


def _inside_link(path: str, rel: str, real_root: str) -> str:
    # Links are kept as relative links so the importer's checks accept them; a link
    # out of the bundle would export some other file of this machine, so it is refused.
    resolved = os.path.realpath(path)
    if os.path.commonpath([resolved, real_root]) != real_root:
        raise BundleError(f"cannot export: '{rel}' links outside the bundle folder")
    return os.path.relpath(resolved, os.path.realpath(os.path.dirname(path)))


def _plain_info(info: tarfile.TarInfo, kind: bytes, mode: int, mtime: float) -> tarfile.TarInfo:
    info.type = kind
    info.mode = mode
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


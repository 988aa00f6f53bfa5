import bz2
import errno
import gzip
import io
import json
import os
import tarfile
import uuid

import pytest

from aiserving.bundle import archive as archive_module
from aiserving.bundle.archive import pack_export, safe_extract
from aiserving.errors import BundleError
from tests.support.bundles import write_bundle

LIMIT = 10 * 1024 * 1024


def file_entry(name, data=b"x", mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def link_entry(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special_entry(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def make_tar(path, entries, gz=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree(folder):
    """Every path under `folder` (relative) with file bytes or link targets."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as fh:
                    out[rel] = ("file", fh.read())
    return out


@pytest.fixture(params=[True, False], ids=["with-data-filter", "checks-only"])
def filters(request, monkeypatch):
    """Run each refusal twice: our checks must hold without Python's data filter too."""
    if request.param:
        assert archive_module._HAS_FILTERS, "this Python has no tar extraction filters (3.11.4+)"
    monkeypatch.setattr(archive_module, "_HAS_FILTERS", request.param)
    return request.param


# -- export round trip ------------------------------------------------------------------

def test_export_then_extract_round_trips_the_bundle(storage, tmp_path):
    bundle = write_bundle(storage)
    (bundle.path / "sub").mkdir()
    (bundle.path / "sub" / "helper.py").write_text("X = 1\n")
    implhash = bundle.record.implhash
    out = pack_export(bundle.path, bundle.record, tmp_path / "exports" / f"{implhash}.tar.gz")
    assert out == tmp_path / "exports" / f"{implhash}.tar.gz"

    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert {n.split("/")[0] for n in names} == {implhash}
    assert names == sorted(names)

    dest = tmp_path / "unpacked"
    safe_extract(out, dest, LIMIT)
    assert [p.name for p in dest.iterdir()] == [implhash]
    got = tree(dest / implhash)
    want = tree(bundle.path)
    del want["distros.json"]
    configs = json.loads(got.pop("configs.json")[1])
    assert got == want
    assert "threshold" not in configs and "mapping" not in configs and "disthash" not in configs
    expected = bundle.record.to_dict()
    for key in ("threshold", "mapping", "disthash"):
        del expected[key]
    assert configs == expected


def test_export_is_deterministic_and_replaces_the_old_file(storage, tmp_path):
    bundle = write_bundle(storage)
    out = tmp_path / "exp.tar.gz"
    out.write_bytes(b"an older export")
    first = pack_export(bundle.path, bundle.record, out).read_bytes()
    second = pack_export(bundle.path, bundle.record, out).read_bytes()
    assert first == second
    assert first != b"an older export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "storage") == ["exp.tar.gz"]


def test_export_skips_pycache_and_keeps_links_inside(storage, tmp_path):
    bundle = write_bundle(storage)
    (bundle.path / "__pycache__").mkdir()
    (bundle.path / "__pycache__" / "pre.cpython-311.pyc").write_bytes(b"\0")
    os.symlink("param.pth", bundle.path / "weights")
    out = pack_export(bundle.path, bundle.record, tmp_path / "e.tar.gz")
    dest = tmp_path / "x"
    safe_extract(out, dest, LIMIT)
    top = dest / bundle.record.implhash
    assert not (top / "__pycache__").exists()
    assert os.readlink(top / "weights") == "param.pth"
    assert (top / "weights").read_bytes() == (bundle.path / "param.pth").read_bytes()


def test_export_refuses_a_link_out_of_the_bundle(storage, tmp_path):
    bundle = write_bundle(storage)
    secret = tmp_path / "secret.txt"
    secret.write_text("node private")
    os.symlink(secret, bundle.path / "leak")
    out = tmp_path / "e.tar.gz"
    with pytest.raises(BundleError, match="leak"):
        pack_export(bundle.path, bundle.record, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".e.tar.gz")] == []


# -- accepted archives ------------------------------------------------------------------

def test_plain_tar_with_links_inside_is_extracted(tmp_path, filters):
    archive = make_tar(tmp_path / "a.tar", [
        file_entry("m/model_core", b"weights"),
        link_entry("m/alias", "model_core"),
        link_entry("m/sub/up", "../model_core"),
        link_entry("m/hard", "m/model_core", tarfile.LNKTYPE),
        file_entry("m/run.sh", b"#!/bin/sh\n", mode=0o4755),
    ], gz=False)
    dest = tmp_path / "dest"
    safe_extract(archive, dest, LIMIT)
    assert (dest / "m" / "alias").read_bytes() == b"weights"
    assert (dest / "m" / "sub" / "up").read_bytes() == b"weights"
    assert (dest / "m" / "hard").read_bytes() == b"weights"
    assert os.stat(dest / "m" / "hard").st_ino == os.stat(dest / "m" / "model_core").st_ino
    assert not os.stat(dest / "m" / "run.sh").st_mode & 0o4000  # no setuid from an archive


def test_target_that_is_not_empty_is_refused(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [file_entry("f", b"new")])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("keep")
    with pytest.raises(BundleError, match="not an empty folder"):
        safe_extract(archive, dest, LIMIT)
    assert tree(dest) == {"old": ("file", b"keep")}


# -- refused archives -------------------------------------------------------------------

def assert_untouched(work, dest, before):
    """Nothing extracted into dest, nothing new beside it."""
    assert not dest.exists() or list(dest.iterdir()) == []
    assert tree(work) == before


def refuse(tmp_path, entries, entry, gz=True, limit=LIMIT):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "outside.txt").write_text("original")
    archive = make_tar(tmp_path / "in" / "a.tar.gz", [file_entry("good.txt", b"ok")] + entries, gz)
    dest = work / "deep" / "dest"
    dest.parent.mkdir()
    before = tree(work)
    with pytest.raises(BundleError) as caught:
        safe_extract(archive, dest, limit)
    assert entry in caught.value.message
    assert_untouched(work, dest, before)
    return caught.value.message


def test_dotdot_entry_is_refused(tmp_path, filters):
    message = refuse(tmp_path, [file_entry("../../evil.txt", b"pwned")], "../../evil.txt")
    assert ".." in message
    assert not (tmp_path / "evil.txt").exists()


def test_dotdot_inside_a_path_is_refused(tmp_path, filters):
    refuse(tmp_path, [file_entry("a/../../../evil.txt", b"pwned")], "a/../../../evil.txt")


def test_absolute_entry_is_refused(tmp_path, filters):
    target = tmp_path / f"abs-evil-{uuid.uuid4().hex}.txt"
    message = refuse(tmp_path, [file_entry(str(target), b"pwned")], str(target))
    assert "absolute" in message
    assert not target.exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../x", "../../outside.txt", ""])
def test_symlink_pointing_outside_is_refused(tmp_path, filters, target):
    refuse(tmp_path, [link_entry("link", target)], "link")


def test_symlink_then_write_through_it_is_refused(tmp_path, filters):
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    refuse(tmp_path, [link_entry("escape", str(outside)),
                      file_entry("escape/evil.txt", b"pwned")], "escape")
    assert list(outside.iterdir()) == []


def test_write_through_a_link_inside_is_refused(tmp_path, filters):
    # The link itself is harmless, but entries below it would land wherever it points.
    refuse(tmp_path, [link_entry("here", "."), file_entry("here/f.txt", b"x")], "here/f.txt")


def test_link_chain_escape_is_refused(tmp_path, filters):
    # "x" -> "." is inside, and "y" -> "x/.." looks inside by its text, but on disk it is
    # the parent of the target folder.
    refuse(tmp_path, [link_entry("x", "."), link_entry("y", "x/.."),
                      file_entry("z", b"z")], "y")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.txt", "ABSOLUTE"])
def test_hardlink_to_outside_is_refused(tmp_path, filters, target):
    # The classic: a hard link to a file outside, then a file of the same name over it.
    if target == "ABSOLUTE":
        target = str(tmp_path / "work" / "outside.txt")
    refuse(tmp_path, [link_entry("h", target, tarfile.LNKTYPE), file_entry("h", b"pwned")], "h")
    assert (tmp_path / "work" / "outside.txt").read_text() == "original"


def test_hardlink_to_a_missing_entry_is_refused(tmp_path, filters):
    refuse(tmp_path, [link_entry("h", "nowhere", tarfile.LNKTYPE)], "h")


def test_duplicate_file_entry_is_refused(tmp_path, filters):
    refuse(tmp_path, [file_entry("good.txt", b"second")], "good.txt")


@pytest.mark.parametrize("kind, word", [(tarfile.CHRTYPE, "character device"),
                                        (tarfile.BLKTYPE, "block device"),
                                        (tarfile.FIFOTYPE, "FIFO")])
def test_device_and_fifo_entries_are_refused(tmp_path, filters, kind, word):
    message = refuse(tmp_path, [special_entry("dev/thing", kind)], "dev/thing")
    assert word in message


def test_archive_over_the_byte_limit_is_refused(tmp_path, filters):
    message = refuse(tmp_path, [file_entry("a.bin", b"a" * 600), file_entry("b.bin", b"b" * 600)],
                     "b.bin", limit=1000)
    assert "more total bytes than the limit" in message


def test_archive_at_the_byte_limit_is_accepted(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [file_entry("a.bin", b"a" * 600),
                                               file_entry("b.bin", b"b" * 400)])
    safe_extract(archive, tmp_path / "dest", 1000)
    assert (tmp_path / "dest" / "b.bin").read_bytes() == b"b" * 400


@pytest.mark.parametrize("content", [
    b"just some text, certainly not a tar archive\n" * 40,
    gzip.compress(b"gzip, but of no tar at all\n" * 40),
    b"",
], ids=["text", "gzip-of-text", "empty"])
def test_non_tar_is_refused(tmp_path, content):
    path = tmp_path / "upload.bin"
    path.write_bytes(content)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="not a tar archive"):
        safe_extract(path, dest, LIMIT)
    assert not dest.exists()


def test_bz2_tar_is_refused(tmp_path):
    plain = make_tar(tmp_path / "a.tar", [file_entry("f", b"data")], gz=False)
    path = tmp_path / "a.tar.bz2"
    path.write_bytes(bz2.compress(plain.read_bytes()))
    with pytest.raises(BundleError, match="not a tar archive"):
        safe_extract(path, tmp_path / "dest", LIMIT)


def test_truncated_archive_leaves_nothing(tmp_path):
    full = make_tar(tmp_path / "a.tar.gz", [file_entry(f"f{i}", os.urandom(4000)) for i in range(8)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    dest = tmp_path / "dest"
    with pytest.raises(BundleError):
        safe_extract(cut, dest, LIMIT)
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-target", "empty-target"])
def test_failure_during_extraction_leaves_the_target_empty(tmp_path, filters, monkeypatch,
                                                           dest_exists):
    # The disk fills up on the second file, when the first is already written.
    archive = make_tar(tmp_path / "a.tar.gz", [file_entry("f0", b"a" * 4000),
                                               file_entry("sub/f1", b"b" * 4000)])
    written = []
    makefile = tarfile.TarFile.makefile

    def full_disk(self, tarinfo, targetpath):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        makefile(self, tarinfo, targetpath)
        written.append(targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", full_disk)
    dest = tmp_path / "dest"
    if dest_exists:
        dest.mkdir()
    with pytest.raises(BundleError, match="extraction failed"):
        safe_extract(archive, dest, LIMIT)
    assert len(written) == 1
    assert dest.exists() == dest_exists
    assert not dest.exists() or list(dest.iterdir()) == []


def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path):
    # 4 MB of zeros packs to a few KB: far over the ratio, far under the byte limit.
    archive = make_tar(tmp_path / "bomb.tar.gz", [file_entry("zeros.bin", b"\0" * 4_000_000)])
    assert archive.stat().st_size < 20_000
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="archive bomb"):
        safe_extract(archive, dest, LIMIT, max_ratio=200)
    assert not dest.exists()
    safe_extract(archive, dest, LIMIT, max_ratio=10_000)  # allowed by a looser setting
    assert (dest / "zeros.bin").stat().st_size == 4_000_000


def test_too_many_entries_are_refused_while_reading(tmp_path):
    archive = make_tar(tmp_path / "many.tar.gz", [file_entry(f"f{n}", b"x") for n in range(50)])
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="more than 20 entries"):
        safe_extract(archive, dest, LIMIT, max_entries=20)
    assert not dest.exists()

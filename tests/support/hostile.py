"""Hostile inputs the fuzz tests share: odd text, traversal paths, broken and bomb images."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

from hypothesis import strategies as st

HUGE_INTS = (0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1)

TRAVERSAL = ("../../etc/passwd", "/etc/passwd", "/etc/shadow", "/proc/self/environ",
             "/proc/1/environ", "/dev/zero", "/dev/urandom", "/tmp/../etc/passwd",
             "/tmp/./../../root/.ssh/id_rsa", "/tmp/\x00/etc/passwd", "/etc/passwd\x00.png",
             "/", "/tmp", "//tmp//", "\\..\\..\\windows\\win.ini", "file:///etc/passwd",
             "/tmp/" + "a" * 5000, "/tmp/" + "ü" * 300 + ".png")
# JSON can carry it; protobuf cannot encode it, so only the REST fuzz sends it.
LONE_SURROGATE = "/tmp/\ud800.png"

# Text a hand-written client would never send: controls, NUL, bidi overrides (lone
# surrogates are left out: protobuf refuses to encode them, before the wire).
ODD_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=64)
ODD_STRINGS = st.one_of(
    ODD_TEXT,
    st.sampled_from(["", " ", "\x00", "\u202e\u202d", "😀" * 40, "../" * 50, "%s%n%x",
                     "{\"a\":", "[]", "null", "0", "-1", "1e309", "NaN", "0" * 4000,
                     "1" * 300, "x" * 70_000, "0x10", "\t\n\r"]),
    st.sampled_from(TRAVERSAL),
)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def broken_images(good: bytes) -> list[bytes]:
    """Files that start like images and are not: truncated, garbage, lying headers."""
    return [b"", b"\x89PNG\r\n\x1a\n", good[: len(good) // 2], good[:40] + b"\xff" * 200,
            b"\xff\xd8\xff\xe0" + b"\x00" * 100, b"GIF89a" + b"\xff" * 30, b"BM" + b"\x00" * 60,
            bomb_png(), bomb_png(2 ** 31 - 1, 1), bomb_png(0, 0), b"not an image at all"]


def _tar(members, compress: bool = True) -> bytes:
    """A tar archive of (TarInfo, bytes or None) members, built in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, kind=tarfile.REGTYPE, link: str = "", size: int = 0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, size, 0o644
    return info


class _Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def hostile_archives(marker: str) -> dict[str, bytes]:
    """Model archives an attacker would upload: each names files outside the import
    folder with `marker` in their names, is a compression bomb, or is not an archive."""
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz", compresslevel=9) as tar:
        tar.addfile(_member("model_core", size=24 * 1024 ** 2), io.BufferedReader(_Zeros(24 * 1024 ** 2)))
    many = [(_member(f"f{n}"), b"") for n in range(12_000)]
    return {
        "garbage": b"this is not an archive" * 10,
        "empty": b"",
        "gzip bomb": bomb.getvalue(),
        "traversal": _tar([(_member(f"../../{marker}-up.py"), b"x"),
                           (_member(f"/tmp/{marker}-abs.py"), b"x")]),
        "links": _tar([(_member("pre_dataprocess.py", tarfile.SYMTYPE, "/etc/passwd"), None),
                       (_member("post_dataprocess.py", tarfile.LNKTYPE, "/etc/shadow"), None),
                       (_member(f"{marker}-dir", tarfile.SYMTYPE, "/tmp"), None),
                       (_member(f"{marker}-dir/{marker}-through.py"), b"x")]),
        "devices": _tar([(_member("model_core", tarfile.CHRTYPE), None),
                         (_member("param.pth", tarfile.FIFOTYPE), None)]),
        "many entries": _tar(many),
        "truncated": _tar([(_member("model.py"), b"x" * 4096)])[:100],
    }

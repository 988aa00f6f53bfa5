"""Section names of an ELF file (64-bit little-endian), read from its section headers."""

from __future__ import annotations

import struct
from pathlib import Path


def section_names(path: Path) -> list[str]:
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [data[shoff + n * shentsize: shoff + (n + 1) * shentsize] for n in range(shnum)]
    strtab_offset, = struct.unpack_from("<Q", headers[shstrndx], 0x18)
    names = []
    for header in headers:
        name_at, = struct.unpack_from("<I", header, 0)
        end = data.index(b"\0", strtab_offset + name_at)
        names.append(data[strtab_offset + name_at:end].decode("ascii"))
    return names

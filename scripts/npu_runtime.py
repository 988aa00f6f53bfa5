"""Put Rockchip's NPU runtime (librknnrt.so) where the Rockchip image needs it.

    python npu_runtime.py --version v2.3.2 [--url URL] [--context FILE] --out PATH

Dockerfile.rk runs this in its npu-runtime stage: the runtime is the file in the build
context (`librknnrt.so` beside the Dockerfile) when there is one, else it is fetched
from --url (`--build-arg RKNN_RUNTIME=...`). With neither, or with something that is not
an aarch64 shared library (an HTML error page, an x86 build), it stops the build saying
what to give. Standard library only: it runs in the bare base image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.request

RELEASE_URL = ("https://github.com/airockchip/rknn-toolkit2/raw/{version}/rknpu2/runtime/"
               "Linux/librknn_api/aarch64/librknnrt.so")
_ET_DYN, _EM_AARCH64 = 3, 183


def elf_problem(path: str) -> str | None:
    """Why the file is not a 64-bit little-endian aarch64 shared object, or None."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if head[:4] != b"\x7fELF":
        start = head[:16].decode("ascii", "replace").strip()
        return f"it is not an ELF file (it starts with {start!r})"
    if head[4] != 2 or head[5] != 1:
        return "it is not a 64-bit little-endian ELF file"
    kind = int.from_bytes(head[16:18], "little")
    machine = int.from_bytes(head[18:20], "little")
    if machine != _EM_AARCH64:
        return f"it is built for ELF machine {machine}, not aarch64 ({_EM_AARCH64})"
    if kind != _ET_DYN:
        return f"it is ELF type {kind}, not a shared library ({_ET_DYN})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True, help="rknn-toolkit2 release, e.g. v2.3.2")
    parser.add_argument("--url", default="", help="where to fetch librknnrt.so from")
    parser.add_argument("--context", default="", help="librknnrt.so given in the build context")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.context and os.path.isfile(args.context):
        source = f"the build context ({os.path.basename(args.context)})"
        shutil.copyfile(args.context, args.out)
    elif args.url:
        source = args.url
        try:
            with urllib.request.urlopen(args.url, timeout=120) as response, \
                    open(args.out, "wb") as fh:
                shutil.copyfileobj(response, fh)
        except (OSError, ValueError) as exc:
            print(f"npu_runtime: could not fetch librknnrt.so from {args.url}: "
                  f"{getattr(exc, 'reason', exc)}", file=sys.stderr)
            return 1
    else:
        print("npu_runtime: no NPU runtime given. Put Rockchip's librknnrt.so of release "
              f"{args.version} beside Dockerfile.rk, or pass --build-arg RKNN_RUNTIME=<URL> "
              f"(Rockchip publishes it at {RELEASE_URL.format(version=args.version)}).",
              file=sys.stderr)
        return 1
    problem = elf_problem(args.out)
    if problem:
        os.unlink(args.out)
        print(f"npu_runtime: librknnrt.so from {source} is not the aarch64 NPU runtime: "
              f"{problem}.", file=sys.stderr)
        return 1
    os.chmod(args.out, 0o644)
    print(f"npu_runtime: librknnrt.so ({os.path.getsize(args.out)} bytes) from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

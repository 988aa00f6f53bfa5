"""Generate the Python modules of the gRPC API from src/aiserving/api/grpc/protos.

    python scripts/gen_protos.py [SRC_ROOT]

Run by scripts/setup.sh and by build_release.py (the generated modules are then
compiled into the release-pack like every other module). protoc writes plain
`import common_pb2`; the imports are rewritten to package-relative ones so the
modules live inside the package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRPC_DIR = Path("aiserving", "api", "grpc")


def generate(src_root: Path = ROOT / "src") -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    proto_dir = src_root / GRPC_DIR / "protos"
    out = src_root / GRPC_DIR / "generated"
    out.mkdir(exist_ok=True)
    protos = sorted(proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files in {proto_dir}")
    for old in out.glob("*_pb2*.py"):
        old.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}",
            f"--grpc_python_out={out}"] + [str(p) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("gen_protos: protoc failed (see its messages above)")
    written = sorted(out.glob("*_pb2*.py"))
    for path in written:
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", text, flags=re.M)
        path.write_text(text, encoding="utf-8")
    return written


if __name__ == "__main__":
    written = generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "src")
    print(f"gen_protos: wrote {len(written)} modules")

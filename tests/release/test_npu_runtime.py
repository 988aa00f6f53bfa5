"""scripts/npu_runtime.py, the Rockchip image's NPU runtime step: the file in the build
context or the one at RKNN_RUNTIME's URL, a clear stop with neither, and nothing that is
not an aarch64 shared library."""

import functools
import http.server
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "npu_runtime.py"


def elf_header(machine: int = 183, kind: int = 3) -> bytes:
    """The first bytes of a 64-bit little-endian ELF file of `machine` and type `kind`."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + kind.to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--version", "v2.3.2", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over a folder: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_file_in_the_build_context_is_taken(tmp_path):
    given = tmp_path / "librknnrt.so"
    given.write_bytes(elf_header() + b"runtime")
    out = tmp_path / "opt" / "librknnrt.so"
    done = run("--context", str(given), "--url", "http://127.0.0.1:9/never-asked", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == given.read_bytes()
    assert oct(os.stat(out).st_mode & 0o777) == "0o644"
    assert "from the build context" in done.stdout


def test_the_url_is_fetched_when_the_context_has_none(tmp_path, served):
    folder, base = served
    (folder / "librknnrt.so").write_bytes(elf_header() + b"fetched")
    out = tmp_path / "librknnrt.so"
    done = run("--context", str(tmp_path / "absent.so"), "--url", f"{base}/librknnrt.so",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().endswith(b"fetched")
    assert f"from {base}/librknnrt.so" in done.stdout


def test_neither_stops_the_build_saying_what_to_give(tmp_path):
    done = run("--context", str(tmp_path / "absent.so"), "--url", "", "--out", str(tmp_path / "x"))
    assert done.returncode == 1
    assert "no NPU runtime given" in done.stderr
    assert "--build-arg RKNN_RUNTIME=" in done.stderr and "beside Dockerfile.rk" in done.stderr
    assert "/raw/v2.3.2/rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content, why", [
    (b"<!DOCTYPE html><html>Not Found</html>", "it is not an ELF file"),
    (elf_header(machine=62), "built for ELF machine 62, not aarch64"),
    (elf_header(kind=2), "ELF type 2, not a shared library"),
])
def test_what_is_not_an_aarch64_library_is_refused(tmp_path, served, content, why):
    folder, base = served
    (folder / "librknnrt.so").write_bytes(content)
    out = tmp_path / "librknnrt.so"
    done = run("--url", f"{base}/librknnrt.so", "--out", str(out))
    assert done.returncode == 1
    assert why in done.stderr and "is not the aarch64 NPU runtime" in done.stderr
    assert not out.exists()


def test_a_real_x86_library_is_refused(tmp_path):
    if platform.machine() != "x86_64":
        pytest.skip("needs an x86 binary at hand")
    done = run("--context", str(Path(sys.executable).resolve()), "--out", str(tmp_path / "l.so"))
    assert done.returncode == 1
    assert "not aarch64" in done.stderr


def test_an_unreachable_url_is_named(tmp_path, served):
    _folder, base = served
    done = run("--url", f"{base}/missing.so", "--out", str(tmp_path / "l.so"))
    assert done.returncode == 1
    assert f"could not fetch librknnrt.so from {base}/missing.so" in done.stderr


def test_the_stand_in_runtime_builds_and_refuses_every_call(tmp_path):
    # scripts/build_images.sh compiles it in the arm64 builder stage; here with this
    # machine's gcc, called through ctypes as rknnlite calls the real one.
    import ctypes

    lib = tmp_path / "librknnrt.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib),
                    str(ROOT / "tests" / "support" / "rknnrt_standin.c")], check=True, timeout=120)
    runtime = ctypes.CDLL(str(lib))
    context = ctypes.c_uint64(0)
    for name in ("rknn_init", "rknn_query", "rknn_inputs_set", "rknn_run", "rknn_outputs_get",
                 "rknn_destroy", "rknn_set_core_mask"):
        assert getattr(runtime, name)(ctypes.byref(context), None, 0, 0, None) == -3, name  # DEVICE_UNAVAILABLE
    assert b"no NPU behind it" in lib.read_bytes()

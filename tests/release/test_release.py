"""The release-pack: compiled modules only, a named failure, a pinned Python, a working node."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.elf import section_names
from tests.support.bundles import reference, write_bundle, write_image
from tests.support.node import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_MODULES = sorted(str(p.relative_to(ROOT / "src").with_suffix(""))
                         for p in (ROOT / "src" / "aiserving").rglob("*.py"))
OTHER_PYTHON = Path("/root/.pyenv/versions/3.12.1/bin/python3")


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Path:
    """The pack CI built (AISRV_RELEASE_PACK), else one built here from this tree."""
    if os.environ.get("AISRV_RELEASE_PACK"):
        return Path(os.environ["AISRV_RELEASE_PACK"]).resolve()
    out = tmp_path_factory.mktemp("pack") / "release-pack"
    done = subprocess.run([sys.executable, str(ROOT / "build_release.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_pack_holds_a_shared_object_for_every_module_and_no_source(pack):
    for module in PACKAGE_MODULES:
        assert list(pack.glob(module + ".*.so")), f"no compiled {module}"
    assert list((pack / "aiserving").rglob("*.py")) == []
    assert list((pack / "aiserving").rglob("*.c")) == []
    for name in ("run.py", "settings.py", "requirements.txt", "VERSION", "BUILD_INFO.json"):
        assert (pack / name).is_file(), name
    info = json.loads((pack / "BUILD_INFO.json").read_text())
    assert info["python"] == "%d.%d" % sys.version_info[:2]
    assert info["machine"] == platform.machine()
    assert (pack / "VERSION").read_text().strip() == info["version"]
    assert "torch==" in (pack / "requirements.txt").read_text()


def test_pack_modules_carry_no_debug_info_or_static_symbols(pack):
    """Debug info was three quarters of the pack (64 MB of 80 on x86_64)."""
    modules = sorted((pack / "aiserving").rglob("*.so"))
    assert modules
    for module in modules:
        names = section_names(module)
        assert ".dynsym" in names, module  # what Python finds PyInit_ through
        kept = [n for n in names if n.startswith(".debug") or n == ".symtab"]
        assert not kept, f"{module.relative_to(pack)} keeps {kept}"
    total = sum(m.stat().st_size for m in modules)
    assert total < 40e6, f"the compiled package is {total / 1e6:.0f} MB"


def test_a_module_that_does_not_compile_fails_the_build_by_name(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "aiserving" / "broker" / "broker.py", "a") as fh:
        fh.write("\ndef broken(:\n    pass\n")
    out = tmp_path / "pack"
    done = subprocess.run([sys.executable, str(ROOT / "build_release.py"), "--src", str(src),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "aiserving.broker.broker" in done.stderr
    assert not out.exists()


def test_the_pack_refuses_another_python_with_one_sentence(pack):
    assert OTHER_PYTHON.exists(), f"{OTHER_PYTHON} is needed for this test (pyenv)"
    done = subprocess.run([str(OTHER_PYTHON), str(pack / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "built for Python %d.%d" % sys.version_info[:2] in done.stderr
    assert "started with Python 3.12" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_node_from_the_pack_serves_with_compiled_modules(pack, storage, tmp_path):
    bundle = write_bundle(storage, name="tiny")
    image = write_image(tmp_path / "a.png", seed=3)
    node = NodeProcess(storage, run_py=pack / "run.py", env={"AISRV_AUTOLOAD": "tiny"}).start()
    try:
        node.wait_switch()
        body = node.detect(image).json()
        assert body["status"] == "success"
        assert body["result"]["scores"] == pytest.approx(reference(bundle, image), rel=1e-4, abs=1e-5)
        health = node.get("/healthz").json()
        assert health["compiled"] is True  # every aiserving module in the front is a .so
        # The node daemon and its inference process map the pack's shared objects.
        (worker,) = node.worker_pids()
        for pid, module in ((node.proc.pid, "node/daemon"), (worker, "inference/worker")):
            maps = {m.path for m in psutil.Process(pid).memory_maps()}
            assert any(p.startswith(str(pack / "aiserving" / module) + ".") and p.endswith(".so")
                       for p in maps), f"{module} is not the compiled one in pid {pid}"
            assert not any("/src/aiserving/" in p for p in maps)
        # The daemon never imports numpy or a framework: only the inference process does.
        daemon = {m.path for m in psutil.Process(node.proc.pid).memory_maps()}
        worker_maps = {m.path for m in psutil.Process(worker).memory_maps()}
        assert any("/numpy/" in p for p in worker_maps) and any("libtorch" in p for p in worker_maps)
        assert not [p for p in daemon if "/numpy/" in p or "libtorch" in p or "/torch/" in p]
        assert "compiled package at " + str(pack / "aiserving") in node.log()
    finally:
        node.stop()

"""The import contracts (.importlinter) hold for the package, and they catch breaks.

Each break is made in a copy of the source, so the test shows that `lint-imports` (run
by scripts/test.sh before any test) fails on exactly the imports the floors and the
nevers forbid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "--config",
                           str(root / ".importlinter")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def copy(tmp_path):
    shutil.copytree(ROOT / "src" / "aiserving", tmp_path / "src" / "aiserving",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def _add(root: Path, module: str, line: str) -> None:
    path = root / "src" / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_the_package_keeps_every_contract():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_backend_importing_a_door_breaks_the_contracts(copy):
    _add(copy, "aiserving.backends.onnx", "from aiserving.api import intake  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert "Backends know nothing of redis, HTTP, the queue or the doors BROKEN" in done.stdout
    assert "aiserving.backends.onnx -> aiserving.api.intake" in done.stdout


def test_the_daemon_importing_numpy_breaks_a_contract(copy):
    _add(copy, "aiserving.node.saved_state", "import numpy  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert "The node daemon imports no numpy, no framework and no inference code BROKEN" \
        in done.stdout
    assert "aiserving.node.saved_state -> numpy" in done.stdout


def test_an_import_circle_breaks_a_contract(copy):
    # progress is what the worker imports; progress importing the worker closes a circle
    _add(copy, "aiserving.inference.progress", "from aiserving.inference import worker  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert "No import circle between the modules of any package BROKEN" in done.stdout


def test_an_upward_import_breaks_the_floors(copy):
    _add(copy, "aiserving.broker.keys", "from aiserving.node import fleet  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert "Floors: each package imports only what lies below it BROKEN" in done.stdout
    assert "aiserving.broker is not allowed to import aiserving.node" in done.stdout


def test_settings_importing_the_broker_breaks_a_contract(copy):
    _add(copy, "aiserving.config.loader", "from aiserving.broker import connection  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert "Settings import nothing of ours but errors BROKEN" in done.stdout

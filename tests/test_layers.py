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


BREAKS = [
    # (module changed, the import added, the contract that breaks, the import it names)
    ("aiserving.backends.onnx", "from aiserving.api import intake",
     "Backends know nothing of redis, HTTP, the queue or the doors",
     "aiserving.backends.onnx -> aiserving.api.intake"),
    ("aiserving.node.saved_state", "import numpy",
     "The node daemon imports no numpy, no framework and no inference code",
     "aiserving.node.saved_state -> numpy"),
    # progress is what the worker imports: progress importing the worker closes a circle
    ("aiserving.inference.progress", "from aiserving.inference import worker",
     "No import circle between the modules of any package", "aiserving.inference.progress"),
    ("aiserving.broker.keys", "from aiserving.node import fleet",
     "Floors: each package imports only what lies below it",
     "aiserving.broker is not allowed to import aiserving.node"),
    ("aiserving.config.loader", "from aiserving.broker import connection",
     "Settings import nothing of ours but errors",
     "aiserving.config.loader -> aiserving.broker.connection"),
]


@pytest.mark.parametrize("module, line, contract, named", BREAKS,
                         ids=[b[0].rpartition(".")[2] for b in BREAKS])
def test_a_forbidden_import_breaks_its_contract(copy, module, line, contract, named):
    _add(copy, module, line + "  # noqa")
    done = _lint(copy)
    assert done.returncode != 0
    assert f"{contract} BROKEN" in done.stdout
    assert named in done.stdout

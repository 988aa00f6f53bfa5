"""Build release-pack/: every module of the package compiled to .so by Cython
(the gRPC modules generated from the .proto files included).

    python build_release.py [--target x86-cpu|jetson|rockchip] [--out release-pack]

The pack holds run.py, a commented settings.py, the target's requirements, the
compiled package (no .py source of it, __init__ files included), VERSION and
BUILD_INFO.json (the Python minor version and machine it was built for; run.py
refuses to start under others). Sources are staged under build/<pack name>/ so
generated .c files never land in src/, and build/ and the output folder are emptied first
so nothing stale leaks into a new pack. Any module that fails to compile fails
the build, named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "aiserving"
TARGETS = {
    "x86-cpu": ["requirements/base.txt", "requirements/x86-cpu.txt"],
    "jetson": ["requirements/base.txt", "requirements/jetson.txt"],
    "rockchip": ["requirements/base.txt", "requirements/rockchip.txt"],
}
# Plain Python semantics: annotations are hints, not C types (an `int` annotation would
# otherwise refuse an IntEnum), and functions keep Python's introspection and keywords.
CYTHON_DIRECTIVES = {"language_level": 3, "binding": True, "always_allow_keywords": True,
                     "annotation_typing": False}
# Generated C trips gcc's array-bounds heuristics; those warnings are about Cython's code.
# -g0 overrides the -g of Python's own CFLAGS: debug info was three quarters of the pack
# (64 MB with it, 16 MB without, on x86_64) and a device has no use for it; it also cuts
# the compile time under emulation. The linker strips what debug info is left (crt objects)
# and the static symbol table; Python finds a module's PyInit_ through the dynamic one.
C_FLAGS = ["-O2", "-g0", "-Wno-array-bounds", "-Wno-unused-function"]
LINK_FLAGS = ["-Wl,--strip-all"]
# Files of the package that ship as they are (data, not code).
DATA_SUFFIXES = {".proto", ".json", ".txt", ".html", ".js", ".css"}  # + the device console page


# Files of the checkout a build reads besides src/ and the target's requirements: a
# Dockerfile's builder stage must COPY each (tests/test_images.py builds from exactly what
# it copies). Checked before anything compiles, so a missing one fails in a second, not
# after the compiler's minutes (tens of them under emulation).
BUILD_INPUTS = ["scripts/gen_protos.py", "run.py", "settings.py"]


class BuildError(Exception):
    pass


def check_inputs(target: str, src: Path) -> None:
    needed = [*BUILD_INPUTS, *TARGETS[target]]
    missing = [name for name in needed if not (ROOT / name).is_file()]
    if not (src / PACKAGE / "__init__.py").is_file():
        missing.append(str(src / PACKAGE / "__init__.py"))
    if missing:
        raise BuildError(f"missing from {ROOT}: {', '.join(missing)} (a build needs "
                         f"{', '.join(needed)} beside build_release.py, and the package "
                         f"under src/)")


def package_modules(src: Path) -> list[tuple[str, Path]]:
    """(dotted module name, file) of every .py file of the package."""
    out = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def check_syntax(modules) -> None:
    """Fail fast, naming the module, before spending minutes in the C compiler."""
    for name, path in modules:
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        except SyntaxError as exc:
            raise BuildError(f"module {name} ({path}) does not compile: line {exc.lineno}: "
                             f"{exc.msg}") from None


def cythonize_all(modules, jobs: int) -> list:
    """Cython each module (in parallel) to C; returns the extensions to compile."""
    from concurrent.futures import ProcessPoolExecutor

    from setuptools import Extension

    names = [name for name, _ in modules]
    rels = [str(Path(*name.split(".")).with_suffix(".py")) for name in names]
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        errors = list(pool.map(_cythonize_one, names, rels))
    for (name, original), error in zip(modules, errors):
        if error:
            raise BuildError(f"module {name} ({original}) failed to compile with Cython: {error}")
    return [Extension(name, [str(Path(rel).with_suffix(".c"))], extra_compile_args=C_FLAGS,
                      extra_link_args=LINK_FLAGS)
            for name, rel in zip(names, rels)]


def _cythonize_one(name: str, rel: str) -> str | None:
    from Cython.Build import cythonize
    from setuptools import Extension

    try:
        cythonize([Extension(name, [rel])], quiet=True, force=True,
                  compiler_directives=CYTHON_DIRECTIVES)
    except Exception as exc:  # Cython reports the details on stderr
        return f"{type(exc).__name__}: {exc}"
    return None


def compile_c(extensions, lib: Path, temp: Path, jobs: int) -> None:
    from setuptools import setup

    def run(exts, parallel):
        setup(name=PACKAGE, ext_modules=exts, script_args=[
            "--quiet", "build_ext", "--build-lib", str(lib), "--build-temp", str(temp),
            "--parallel", str(parallel)])

    try:
        run(extensions, jobs)
    except (Exception, SystemExit):
        # Find the culprit to name it: compile one by one (only after a failure).
        for ext in extensions:
            try:
                run([ext], 1)
            except (Exception, SystemExit) as exc:
                raise BuildError(f"module {ext.name} failed to compile to a shared object: "
                                 f"{exc}") from None
        raise BuildError("the C compiler failed; see its messages above") from None


def build(target: str, out: Path, src: Path, jobs: int) -> Path:
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    check_inputs(target, src)
    work = ROOT / "build" / out.name  # staged sources, C files, objects: never in src/
    for folder in (work, out):
        shutil.rmtree(folder, ignore_errors=True)
    _generate_protos(src)
    modules = package_modules(src)
    if not modules:
        raise BuildError(f"no package {PACKAGE} under {src}")
    check_syntax(modules)
    staged = work / "src"
    shutil.copytree(src / PACKAGE, staged / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.so", "*.pyc"))
    cwd = os.getcwd()
    os.chdir(staged)  # Cython names modules from paths relative to here
    try:
        extensions = cythonize_all(modules, jobs)
        compile_c(extensions, work / "lib", work / "temp", jobs)
    finally:
        os.chdir(cwd)

    out.mkdir(parents=True)
    for so in (work / "lib" / PACKAGE).rglob("*.so"):
        dest = out / so.relative_to(work / "lib")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(so, dest)
    for data in (src / PACKAGE).rglob("*"):
        if data.suffix in DATA_SUFFIXES and "__pycache__" not in data.parts:
            dest = out / data.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data, dest)
    missing = [name for name, _ in modules if not _compiled_path(out, name)]
    if missing:
        raise BuildError(f"no shared object was produced for: {', '.join(missing)}")
    leaked = [str(p) for p in (out / PACKAGE).rglob("*.py")]
    if leaked:
        raise BuildError(f"package source leaked into the pack: {', '.join(leaked)}")

    shutil.copy2(ROOT / "run.py", out / "run.py")
    shutil.copy2(ROOT / "settings.py", out / "settings.py")
    requirements = ["# Runtime requirements of this release-pack (target %s)." % target]
    for req in TARGETS[target]:
        requirements.append((ROOT / req).read_text(encoding="utf-8").strip())
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    version = _version(src)
    (out / "VERSION").write_text(version + "\n", encoding="utf-8")
    info = {
        "version": version, "target": target,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _generate_protos(src: Path) -> None:
    """The gRPC modules are generated from the .proto files, then compiled like the rest."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    try:
        gen.generate(src)
    except SystemExit as exc:
        raise BuildError(str(exc)) from None


def _compiled_path(out: Path, name: str) -> Path | None:
    parts = name.split(".")
    folder = out.joinpath(*parts[:-1])
    hits = list(folder.glob(parts[-1] + ".*.so")) if folder.is_dir() else []
    return hits[0] if hits else None


def _version(src: Path) -> str:
    for line in (src / PACKAGE / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BuildError("no __version__ in the package's __init__.py")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="x86-cpu", choices=sorted(TARGETS))
    parser.add_argument("--out", default=str(ROOT / "release-pack"))
    parser.add_argument("--src", default=str(ROOT / "src"), help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        out = build(args.target, Path(args.out).resolve(), Path(args.src).resolve(), args.jobs)
    except BuildError as exc:
        print(f"build_release: FAILED: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"build_release: {out} built in {time.monotonic() - started:.0f} s "
          f"({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

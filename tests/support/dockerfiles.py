"""Read a Dockerfile the way a builder does, as far as the image tests need: instructions
with continuations joined, stages, ARG defaults, and the build context that
`.dockerignore` leaves, laid out as the files a stage's COPY lines would take."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def words(self, word: str) -> list[str]:
        return [rest for w, rest in self.steps if w == word]

    def context_copies(self) -> list[list[str]]:
        """The sources of each COPY/ADD from the build context (not from another stage)."""
        out = []
        for word, rest in self.steps:
            if word in ("COPY", "ADD"):
                parts = [p for p in rest.split() if not p.startswith("--")]
                if "--from=" not in rest:
                    out.append(parts[:-1])
        return out


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(path: Path) -> list[Stage]:
    out: list[Stage] = []
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            out.append(Stage(parts[0], name))
        elif out:
            out[-1].steps.append((word, rest))
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r"^ARG (\w+)=(\S*)", path.read_text(), re.M)}


def resolve(path: Path, value: str) -> str:
    args = arg_defaults(path)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


def _ignore_patterns(root: Path) -> list[tuple[bool, str]]:
    ignore = root / ".dockerignore"
    if not ignore.is_file():
        return []
    out = []
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line[1:] if keep else line
        out.append((keep, pattern.strip("/")))
    return out


def _matches(pattern: str, rel: str) -> bool:
    # Docker matches from the context's root (a pattern without a slash is not matched in
    # subfolders, unlike .gitignore), `**` spans folders, and a match on a folder takes
    # everything under it.
    regex = ""
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern):
        if piece.startswith("**"):
            regex += "(.*/)?" if piece.endswith("/") else ".*"
        elif piece == "*":
            regex += "[^/]*"
        elif piece == "?":
            regex += "[^/]"
        else:
            regex += re.escape(piece)
    parts = rel.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def ignored(root: Path, rel: str) -> bool:
    verdict = False
    for keep, pattern in _ignore_patterns(root):
        if _matches(pattern, rel):
            verdict = not keep
    return verdict


def lay_out(root: Path, stage: Stage, dest: Path) -> list[str]:
    """Copy into `dest` what the stage's COPY lines put under its WORKDIR, taken from the
    context `root` as a builder would (globs allowed, .dockerignore applied, a folder's
    contents copied into the destination); returns the files laid out, relative."""
    copied = []
    workdir = "/"
    for word, rest in stage.steps:
        if word == "WORKDIR":
            workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, target = [p for p in rest.split() if not p.startswith("--")]
        absolute = target if target.startswith("/") else f"{workdir.rstrip('/')}/{target}"
        if not (absolute + "/").startswith(workdir.rstrip("/") + "/"):
            continue  # outside the build folder: not what the build reads
        into = dest / absolute[len(workdir):].strip("/")
        as_folder = target.endswith("/") or len(sources) > 1
        for source in sources:
            matches = sorted(root.glob(source)) if any(c in source for c in "*?[") \
                else [root / source.rstrip("/")]
            for match in matches:
                if not match.exists():
                    continue
                if match.is_file():
                    pairs = [(match, into / match.name if as_folder else into)]
                else:
                    pairs = [(f, into / f.relative_to(match)) for f in sorted(match.rglob("*"))
                             if f.is_file()]
                for path, out in pairs:
                    rel = path.relative_to(root).as_posix()
                    if ignored(root, rel):
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
                    copied.append(out.relative_to(dest).as_posix())
    return copied

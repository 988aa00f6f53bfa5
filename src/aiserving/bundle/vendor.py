"""Loading a bundle's vendor code, isolated from every other bundle.

Each bundle's files are imported under a private package name
(`aisrv_bundle_<implhash>_<version>_<folder hash>`), so two bundles that both ship
`pre_dataprocess.py` -- or both ship a helper `utils.py` that their code
imports with a plain `import utils` -- never share a `sys.modules` entry.
Plain sibling imports are served from the bundle folder while the vendor
module executes and are then taken out of `sys.modules` again.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import inspect
import re
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiserving.bundle.store import Bundle
from aiserving.errors import AiservingError, BundleError

_import_lock = threading.Lock()  # sys.path / sys.modules juggling is process-wide


def namespace_of(bundle: Bundle) -> str:
    # The folder is part of the name: the same fullhash in two stores is two bundles.
    where = hashlib.md5(str(bundle.path.resolve()).encode()).hexdigest()[:8]
    return "aisrv_bundle_" + re.sub(r"\W", "_", bundle.fullhash) + "_" + where


def load_module(bundle: Bundle, filename: str) -> types.ModuleType:
    """Import one Python file of the bundle under the bundle's private package."""
    path = bundle.file(filename)
    package = namespace_of(bundle)
    name = f"{package}.{path.stem}"
    with _import_lock:
        if name in sys.modules:
            return sys.modules[name]
        if package not in sys.modules:
            pkg = types.ModuleType(package)
            pkg.__path__ = [str(bundle.path)]
            sys.modules[package] = pkg
        sealed = _SealedFinder(bundle) if bundle.sealed_files() else None
        if sealed is not None:
            spec = importlib.util.spec_from_loader(name, _SealedLoader(bundle, filename),
                                                   origin=str(path))
        else:
            spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        sys.modules[name] = module
        sys.path.insert(0, str(bundle.path))
        if sealed is not None:
            sys.meta_path.insert(0, sealed)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            if isinstance(exc, AiservingError):  # a sealed file that does not open
                raise
            raise BundleError(f"bundle {bundle.fullhash}: {filename} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(bundle.path))
            if sealed is not None:
                sys.meta_path.remove(sealed)
            _forget_sibling_imports(bundle.path, before)
        return module


class _SealedLoader(importlib.abc.Loader):
    """Runs a bundle's Python file from its bytes, decrypted in memory when sealed.

    No bytecode is cached: a `.pyc` of a sealed file would be its plaintext on disk.
    """

    def __init__(self, bundle: Bundle, filename: str):
        self.bundle, self.filename = bundle, filename

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        source = self.bundle.read(self.filename)
        module.__file__ = str(self.bundle.path / self.filename)
        exec(compile(source, module.__file__, "exec", dont_inherit=True), module.__dict__)


class _SealedFinder(importlib.abc.MetaPathFinder):
    """Plain `import helper` of a sealed sibling file, while vendor code executes."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or "." in fullname:
            return None
        filename = f"{fullname}.py"
        origin = self.bundle.path / filename
        if not origin.is_file() or not self.bundle.is_sealed(filename):
            return None
        return importlib.util.spec_from_loader(fullname, _SealedLoader(self.bundle, filename),
                                               origin=str(origin))


def _forget_sibling_imports(folder: Path, before: set[str]) -> None:
    """Drop top-level modules that the vendor file imported from its own folder."""
    folder = folder.resolve()
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules[name], "__file__", None)
        if origin and not name.startswith("aisrv_bundle_"):
            try:
                Path(origin).resolve().relative_to(folder)
            except ValueError:
                continue
            del sys.modules[name]


@dataclass
class VendorCode:
    """A bundle's pre/post-processing, called the way the contract says."""

    pre: Callable[[dict], Any]
    post: Callable
    post_arity: int  # 1: post_dataprocess(post_frame); 3: (pre_p, prediction, classes)

    @classmethod
    def load(cls, bundle: Bundle) -> "VendorCode":
        pre = getattr(load_module(bundle, "pre_dataprocess.py"), "pre_dataprocess", None)
        post = getattr(load_module(bundle, "post_dataprocess.py"), "post_dataprocess", None)
        if not callable(pre):
            raise BundleError(f"bundle {bundle.fullhash}: pre_dataprocess.py defines no "
                              "function pre_dataprocess")
        if not callable(post):
            raise BundleError(f"bundle {bundle.fullhash}: post_dataprocess.py defines no "
                              "function post_dataprocess")
        arity = _positional_arity(post)
        if arity not in (1, 3):
            raise BundleError(f"bundle {bundle.fullhash}: post_dataprocess takes {arity} "
                              "arguments; it must take 1 (post_frame) or 3 "
                              "(pre_p, prediction, classes)")
        return cls(pre, post, arity)


def _positional_arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        code = getattr(fn, "__code__", None)
        return code.co_argcount if code else -1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty)

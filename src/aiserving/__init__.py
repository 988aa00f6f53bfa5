"""AIServing OnBoard: an edge inference appliance serving JSM bundles."""

__version__ = "1.0.0"


def build_info() -> dict:
    """Version, and whether the package modules loaded here are compiled (a release-pack)."""
    import importlib.machinery
    import os
    import sys

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    files = [getattr(m, "__file__", None) or "" for name, m in list(sys.modules.items())
             if name == "aiserving" or name.startswith("aiserving.")]
    return {"version": __version__, "compiled": all(f.endswith(suffixes) for f in files),
            "package": os.path.dirname(__file__)}

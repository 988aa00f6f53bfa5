"""The box: storage, the preheat image, the node's name, what loads at start, logging."""

from __future__ import annotations

from aiserving.config.checks import Setting, log_level

TITLE = "The box"

SETTINGS: tuple[Setting, ...] = (
    # legacy keys (contract, section 4)
    Setting("storage", "storage", "str",
            "Folder holding the JSM bundles (`<storage>/models/<implhash>/<version>/`) and the "
            "node's private files. A relative path is taken from the settings file's folder."),
    Setting("preheat", "", "str",
            "Image used to warm a model up after loading. Empty: a built-in grey 224x224 JPEG."),
    # keys of this product
    Setting("node.name", "", "str",
            "Name of this node in a shared redis. Empty: the host name. Two nodes sharing "
            "one redis need different names."),
    Setting("autoload", [], "list",
            "Models loaded on start, each a fullhash, `implhash/version`, implhash or "
            "distros `name` (env: comma-separated)."),
    Setting("log.level", "INFO", "str", "Log level (`--debug` sets DEBUG).", log_level),
    Setting("profile", False, "bool",
            "Log per-stage timings (queue wait, pre, infer, post) for every batch (`--profile`)."),
)

"""Logging set-up shared by the node, its workers and the REST front."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", who: str = "node") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s [{who}] %(name)s: %(message)s",
        stream=sys.stderr, force=True)

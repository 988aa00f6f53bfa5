"""What the node was asked to run, kept under the storage folder so a reboot restores it.

The backends (their settings and the model each runs or is loading) and the
backend legacy REST calls go to are written atomically whenever they change,
and read back when the node starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aiserving.bundle.archive import atomic_output

log = logging.getLogger(__name__)

FORMAT = 1


class SavedState:
    def __init__(self, storage: Path):
        self.path = Path(storage) / "state" / "node.json"
        self._written: str | None = None

    def load(self) -> dict | None:
        """The saved state, or None on a first boot (or if the file is unreadable)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
            if state.get("format") != FORMAT or not isinstance(state.get("backends"), list):
                raise ValueError("unknown format")
        except (ValueError, AttributeError) as exc:
            log.error("ignoring the saved state %s: %s", self.path, exc)
            return None
        self._written = text
        return state

    def save(self, backends: list[dict], rest_bid: str | None) -> None:
        text = json.dumps({"format": FORMAT, "rest_bid": rest_bid, "backends": backends},
                          indent=1, sort_keys=True)
        if text == self._written:
            return
        try:
            with atomic_output(self.path, 0o600) as fh:
                fh.write(text.encode("utf-8"))
        except OSError as exc:  # a full disk must not stop serving
            log.error("cannot save the node's state to %s: %s", self.path, exc)
            return
        self._written = text

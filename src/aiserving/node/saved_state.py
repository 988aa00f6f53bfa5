"""What the node was asked to run, kept under the storage folder so a reboot restores it.

The backends (their settings and the model each runs or is loading) and the
backend legacy REST calls go to are written atomically whenever they change,
and read back when the node starts (`restore`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aiserving.bundle.archive import atomic_output
from aiserving.errors import AiservingError, ModelKeyError
from aiserving.status import BackendState

log = logging.getLogger(__name__)

FORMAT = 1


class SavedState:
    def __init__(self, storage: Path):
        self.path = Path(storage) / "state" / "node.json"
        self._written: str | None = None
        # Nothing is saved before the saved state was read back (restore), nor once the
        # node is stopping: what ran before the stop is what the next start restores.
        self.enabled = False

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
        if not self.enabled:
            return
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


def restore(node) -> set[str]:
    """Bring back the backends of the previous run and start loading their models.

    Returns the fullhashes being loaded. A model that cannot be loaded any more
    leaves its backend in error with the reason; the others come back anyway.
    """
    state = node.saved.load()
    with node.lock:
        node.saved.enabled = True
    if not state:
        return set()
    loading = set()
    for saved in state["backends"]:
        try:
            bid = node.create_backend(saved["impl"], saved["batchsize"], saved["inferprocnum"],
                                      saved.get("device", ""), saved.get("preheat", ""),
                                      bid=str(saved["bid"]))
        except (AiservingError, KeyError, TypeError, ValueError) as exc:
            log.error("cannot restore backend %s: %s", saved.get("bid"),
                      getattr(exc, "message", exc))
            continue
        model = saved.get("model")
        if not model:
            continue
        try:
            if saved.get("encrypted"):
                with node.lock:
                    node.backends[bid].awaiting = {"model": model, "encrypted": True,
                                                   "name": _name_of(node, model)}
                raise ModelKeyError("it is encrypted and keys are never stored: load it "
                                    "again with its a64key and pvtkey")
            node.load_model(bid, node.store.resolve(model))
            loading.add(model)
        except AiservingError as exc:
            log.error("backend %s: cannot restore model %s: %s", bid, model, exc.message)
            with node.lock:
                entry = node.backends[bid]
                entry.awaiting = entry.awaiting or {"model": model, "encrypted": False,
                                                    "name": _name_of(node, model)}
                entry.state, entry.msg = BackendState.ERROR, f"model {model} could not be " \
                    f"restored after a restart: {exc.message}"
                node.publish()
    with node.lock:
        if state.get("rest_bid") in node.backends:
            node.rest_bid = state["rest_bid"]
            node.publish()
    log.info("restored %d backend(s) from %s", len(node.backends), node.saved.path)
    return loading


def to_save(entries, default_preheat: str) -> list[dict]:
    """What to restore after a restart, from the node's backend entries."""
    backends = []
    for e in entries:
        if e.state == BackendState.EXITING:
            continue
        # The model asked for last, unless its load failed: then what still serves.
        gen = e.current if e.current is not None and not e.current.failed else e.serving
        if gen is not None:
            model, encrypted = gen.bundle.fullhash, gen.bundle.encrypted
        elif e.awaiting:  # not back yet: the next start tries (or asks for the key) again
            model, encrypted = e.awaiting["model"], e.awaiting["encrypted"]
        else:
            model, encrypted = None, False
        backends.append({"bid": e.bid, "impl": e.impl, "batchsize": e.batchsize,
                         "inferprocnum": 0 if e.auto_sized else e.inferprocnum,
                         "device": e.device,
                         "preheat": "" if e.preheat == default_preheat else e.preheat,
                         "model": model, "encrypted": bool(encrypted)})
    return backends


def _name_of(node, model: str) -> str:
    """The distros name of a stored model, "" where it is gone."""
    try:
        return node.store.resolve(model).record.name
    except AiservingError:
        return ""

"""Logging set-up shared by the node, its workers and the REST front.

Every line is timestamped and names its process. A warning or error repeated word for
word (a redis outage seen by every request, a peer guessing tokens) is written once per
`REPEAT_WINDOW_S`; how many more there were follows as one line when the window ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

REPEAT_WINDOW_S = 10.0


class RepeatFilter(logging.Filter):
    """Let the first of identical warnings through; count the rest for a summary line."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S):
        super().__init__()
        self.window_s = window_s
        self._lock = threading.Lock()
        # (logger, level, text) -> [first at, how many more, the record]
        self._seen: dict[tuple, list] = {}
        self._sweeper: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "summary", False):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            self._seen[key] = [now, 0, record]
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="log-repeats",
                                                 daemon=True)
                self._sweeper.start()
        return True

    def _sweep(self) -> None:
        """One thread per process: says how many repeats each window held, once it ends."""
        while True:
            time.sleep(self.window_s / 4)
            now = time.monotonic()
            with self._lock:
                ended = [(k, v) for k, v in self._seen.items() if now - v[0] >= self.window_s]
                for key, _ in ended:
                    del self._seen[key]
            for (name, level, text), (_, more, _record) in ended:
                if more:
                    logging.getLogger(name).log(
                        level, "... %d more like it in the last %.0f s: %s", more,
                        self.window_s, text, extra={"summary": True})


def setup_logging(level: str = "INFO", who: str = "node") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s [{who}] %(name)s: %(message)s",
        stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())

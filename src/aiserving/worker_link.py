"""What the node and its inference processes agree on, without importing the worker.

The node daemon spawns workers and watches them; the worker module brings numpy,
Pillow and (lazily) a framework with it. The daemon imports only this module,
so it stays small; the spawned process imports the worker.
"""

from __future__ import annotations

import re

EXIT_LOAD_FAILED = 3  # the model cannot load: restarting would not help

#: slots of the shared progress array a worker writes and the node's watchdog reads
STARTED, STAGE, INDEX = 0, 1, 2
#: stages written to the STAGE slot (`Pipeline.on_stage`)
IDLE, PRE, INFER, POST = 0, 1, 2, 3


def temp_prefix(consumer: str) -> str:
    """Prefix of the temp files one inference process makes under `<storage>/run/tmp/`."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", consumer) + "-"


def worker_main(spec: dict, conn, stop_event, progress) -> None:
    """Entry point of a spawned inference process."""
    from aiserving import worker

    worker.worker_main(spec, conn, stop_event, progress)

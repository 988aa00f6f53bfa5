"""What the node and its inference processes agree on, without importing the worker.

The node daemon spawns workers and watches them; the worker module brings numpy,
Pillow and (lazily) a framework with it. The daemon imports only this module and
`entry`, so it stays small; the spawned process imports the worker.
"""

from __future__ import annotations

import re

EXIT_LOAD_FAILED = 3  # the model cannot load: restarting would not help

#: slots of the shared progress array a worker writes and the node's watchdog reads
STARTED, STAGE, INDEX = 0, 1, 2
#: stages written to the STAGE slot (`Pipeline.on_stage`)
IDLE, PRE, INFER, POST = 0, 1, 2, 3


#: shared memory holding the message ids of the batch a worker runs, for the watchdog
BATCH_IDS_BYTES = 48 * 1024  # 1000 ids of up to 47 bytes (tagged: `broker.tag_id`)


def write_batch(board, ids: list[bytes]) -> None:
    """Post a batch's message ids (a plain store: no message, no wake-up for the node)."""
    data = b",".join(ids)
    if len(data) >= BATCH_IDS_BYTES:  # never with ids redis makes; keep whole ids only
        data = data[:BATCH_IDS_BYTES - 1].rpartition(b",")[0]
    board.value = data


def read_batch(board) -> list[str]:
    return [i for i in board.value.decode().split(",") if i]


def temp_prefix(consumer: str) -> str:
    """Prefix of the temp files one inference process makes under `<storage>/run/tmp/`."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", consumer) + "-"

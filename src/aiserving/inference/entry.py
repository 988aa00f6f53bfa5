"""The spawn target of an inference process, importable by the daemon.

It is pickled by name when the node spawns a process, so the daemon must import it;
the worker (numpy, Pillow, a framework) is imported only inside the new process.
"""

from __future__ import annotations


def worker_main(spec: dict, conn, stop_event, progress, board) -> None:
    """Entry point of a spawned inference process."""
    from aiserving.inference import worker

    worker.worker_main(spec, conn, stop_event, progress, board)

"""Process helpers shared by the node's children."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time

import psutil

_PR_SET_PDEATHSIG = 1
_RESEND_S = 2.0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent dies (a killed node leaves nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the node's own shutdown still stops children
        pass


def stop_process(process: subprocess.Popen | None, timeout: float,
                 children_too: bool = False) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds.

    `children_too`: SIGTERM its children directly as well, every few seconds while
    it waits for them. A gunicorn worker forked an instant before its master was
    told to stop still runs the master's signal handler, which only queues the
    master's SIGTERM in the worker's copy of the master: the worker then serves on
    and the master waits out its whole graceful timeout for it.
    """
    if process is None or process.poll() is not None:
        return
    process.terminate()
    deadline = time.monotonic() + timeout
    while True:
        try:
            process.wait(min(_RESEND_S, max(0.0, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                break
        if children_too:
            try:
                for child in psutil.Process(process.pid).children():
                    child.send_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
            except psutil.Error:
                pass
    process.kill()
    process.wait()

"""How big a batch should get, and how many processes a model needs: measured once
per model, at preheat.

Batching pays where the framework's cost per item falls with the batch size (a
GPU, a model dominated by per-call overhead); on a small CPU a convolutional
network often costs *more* per item in a batch of 8 than alone. The worker
times its own pipeline at batch 1, 2, 4, ... up to the backend's batch size and
stops growing batches where the cost per item stops falling.
"""

from __future__ import annotations

import math
import time
from typing import Callable

#: a bigger batch must be at least this much cheaper per item to be worth its wait
GAIN = 0.05
GIVE_UP = 1.5  # a size this much dearer per item than the best: bigger ones are not tried
#: runs per size: at least REPEATS, more for a fast model until BUDGET_S is spent
REPEATS = 3
MAX_REPEATS = 100
BUDGET_S = 0.15


def sizes_to_try(batchsize: int) -> list[int]:
    sizes, n = [], 1
    while n < batchsize:
        sizes.append(n)
        n *= 2
    return sizes + [batchsize]


def measure(run: Callable[[int], None], batchsize: int,
            clock: Callable[[], float] = time.perf_counter,
            per_batch: float = 0.0) -> tuple[int, dict[int, float]]:
    """(batch cap, {batch size: seconds per item}) for `run(n)`, which runs a batch of n.

    Every size is timed (the best of several runs, so one stall of a busy box does
    not decide it) until one costs GIVE_UP times the best so far per item; the cap
    is the smallest size within GAIN of the cheapest, so a batch only grows for a
    real saving.
    `per_batch`: what serving a batch costs besides the pipeline (taking it from
    and answering it to redis), shared by its items like the framework call.
    """
    table: dict[int, float] = {}
    for size in sizes_to_try(batchsize):
        best, spent, runs = float("inf"), 0.0, 0
        while runs < REPEATS or (spent < BUDGET_S and runs < MAX_REPEATS):
            t0 = clock()
            run(size)
            took = clock() - t0
            best, spent, runs = min(best, took), spent + took, runs + 1
        table[size] = (best + per_batch) / size
        if table[size] > GIVE_UP * min(table.values()):
            break
    cheapest = min(table.values())
    cap = min(size for size, cost in table.items() if cost <= cheapest * (1 + GAIN))
    return cap, table


def fill_wait(costs: dict[int, float], held: int, max_delay: float) -> float:
    """How long a batch of `held` jobs may wait for more: `max_delay`, but no longer
    than running it takes by the measured `costs` (seconds per item by batch size).

    Waiting longer than that for a cheap model only stalls the callers held, each a
    client that cannot send its next request: at moderate load batches then lock into
    step with the slowest client. Unmeasured (`costs` empty): `max_delay`.
    """
    sizes = [n for n in costs if n <= held]
    if not sizes:
        return max_delay
    return min(max_delay, held * costs[max(sizes)])


def describe(cap: int, table: dict[int, float]) -> str:
    cells = ", ".join(f"{size}: {1000 * cost:.2f} ms" for size, cost in table.items())
    return f"cost per item by batch size: {cells}; batches capped at {cap}"


#: CPU seconds one request costs this node besides the model: the front, redis and the
#: worker's own serving (measured at concurrency 16 on a 2-core x86 box, bench/RESULTS.md).
#: A model much cheaper than this leaves its process idle most of the time: another
#: process would only take cores from the front.
REQUEST_PATH_S = 0.0008


def processes_for(item_cost: float, most: int) -> int:
    """Inference processes a model costing `item_cost` seconds per item needs, out of
    `most` (one per core): the share of the box it takes at full load, when each
    request also costs REQUEST_PATH_S elsewhere, in whole processes."""
    share = item_cost / (item_cost + REQUEST_PATH_S)
    return max(1, min(most, math.ceil(most * share - 1e-9)))

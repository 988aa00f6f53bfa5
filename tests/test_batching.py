"""The batch cap: batches grow while the cost per item keeps falling."""

import pytest

from aiserving import batching


def _timed(per_call: float, per_item: float):
    """A fake pipeline and clock: a batch of n costs per_call + n * per_item."""
    now = [0.0]
    calls = []

    def run(n: int) -> None:
        calls.append(n)
        now[0] += per_call + n * per_item

    return run, (lambda: now[0]), calls


def test_sizes_tried_are_powers_of_two_and_the_batch_size():
    assert batching.sizes_to_try(8) == [1, 2, 4, 8]
    assert batching.sizes_to_try(12) == [1, 2, 4, 8, 12]
    assert batching.sizes_to_try(1) == [1]


def test_call_overhead_makes_batches_worth_it():
    run, clock, _ = _timed(per_call=0.010, per_item=0.001)
    cap, table = batching.measure(run, 8, clock)
    assert cap == 8
    assert table[1] == pytest.approx(0.011) and table[8] == pytest.approx(0.010 / 8 + 0.001)


def test_a_model_that_costs_the_same_per_item_is_not_batched():
    run, clock, calls = _timed(per_call=0.0, per_item=0.100)
    cap, table = batching.measure(run, 8, clock)
    assert cap == 1
    assert sorted(table) == [1, 2]  # it stopped at the first size that did not pay
    assert calls == [1, 1, 1, 2, 2, 2]


def test_a_cost_that_rises_again_stops_the_growth():
    costs = {1: 0.010, 2: 0.006, 4: 0.0058, 8: 0.004}  # 4 is not 5 % cheaper than 2
    now = [0.0]

    def run(n):
        now[0] += costs[n] * n

    cap, table = batching.measure(run, 8, lambda: now[0])
    assert cap == 2 and 8 not in table
    assert "batches capped at 2" in batching.describe(cap, table)

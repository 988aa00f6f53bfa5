"""The batch cap: the smallest batch within 5 % of the cheapest cost per item."""

import pytest

from aiserving.inference import batching


def _timed(per_call: float, per_item: float):
    """A fake pipeline and clock: a batch of n costs per_call + n * per_item."""
    now = [0.0]
    calls = []

    def run(n: int) -> None:
        calls.append(n)
        now[0] += per_call + n * per_item

    return run, (lambda: now[0]), calls


def _costs(table: dict):
    """A fake pipeline and clock with a given cost per item for each batch size."""
    now = [0.0]

    def run(n):
        now[0] += table[n] * n

    return run, (lambda: now[0])


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
    assert cap == 1 and sorted(table) == [1, 2, 4, 8]
    assert calls[:3] == [1, 1, 1]


def test_a_small_first_step_does_not_hide_a_bigger_saving_later():
    run, clock = _costs({1: 0.52, 2: 0.51, 4: 0.45, 8: 0.41})
    cap, _ = batching.measure(run, 8, clock)
    assert cap == 8


def test_the_smallest_batch_near_the_cheapest_is_chosen():
    run, clock = _costs({1: 0.010, 2: 0.006, 4: 0.0059, 8: 0.0061})
    cap, table = batching.measure(run, 8, clock)
    assert cap == 2
    assert "batches capped at 2" in batching.describe(cap, table)


def test_sizes_far_dearer_than_the_best_stop_the_search():
    run, clock = _costs({1: 0.020, 2: 0.025, 4: 0.031, 8: 0.040})
    cap, table = batching.measure(run, 8, clock)
    assert cap == 1 and sorted(table) == [1, 2, 4]


def test_the_serving_cost_of_a_batch_is_shared_by_its_items():
    run, clock = _costs({1: 0.010, 2: 0.010, 4: 0.010, 8: 0.010})
    assert batching.measure(run, 8, clock)[0] == 1
    assert batching.measure(run, 8, clock, per_batch=0.02)[0] == 8


def test_a_model_cheaper_than_the_request_path_gets_one_process():
    # Tenths of a millisecond per item: the front, not the model, is what the box runs.
    assert batching.processes_for(0.0003, 2) == 1
    assert batching.processes_for(0.00005, 8) == 1


def test_a_dear_model_gets_a_process_per_core():
    assert batching.processes_for(0.018, 2) == 2
    assert batching.processes_for(0.018, 8) == 8


def test_in_between_the_processes_follow_the_models_share_of_the_box():
    # 0.8 ms model + 0.8 ms elsewhere: half of each request's CPU, half the cores.
    assert batching.processes_for(batching.REQUEST_PATH_S, 8) == 4
    assert batching.processes_for(batching.REQUEST_PATH_S, 2) == 1
    assert batching.processes_for(0.0012, 2) == 2
    assert batching.processes_for(0.0, 4) == 1


def test_a_batch_waits_no_longer_for_more_than_running_it_takes():
    costs = {1: 0.0005, 2: 0.0004, 4: 0.0003, 8: 0.00025}
    assert batching.fill_wait(costs, 1, 0.005) == 0.0005
    assert batching.fill_wait(costs, 3, 0.005) == 3 * 0.0004  # the nearest size measured below
    assert batching.fill_wait(costs, 8, 0.005) == 8 * 0.00025


def test_a_dear_batch_waits_batch_max_delay_at_most():
    assert batching.fill_wait({1: 0.02}, 1, 0.005) == 0.005


def test_unmeasured_batches_wait_batch_max_delay():
    assert batching.fill_wait({}, 3, 0.005) == 0.005

"""Fair share: decay arithmetic and the order a pass starts jobs in (usage, then priority, then age)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scheduler.fairshare import accrued, add, decayed
from scheduler.policy import plan
from tests.scheduler.factories import NOW, job, nodes, running

DAY = 86400.0


def first_started(pending, usage, *, free=1, runs=(), **kwargs):  # type: ignore[no-untyped-def]
    """The jobs a pass starts, in order, on one 8-GPU node with `free` GPUs free."""
    busy = [running("busy", "n0", 8 - free, ends_in=10.0)] if free < 8 else []
    result = plan(pending, busy + list(runs), nodes(1), usage, NOW, **kwargs)
    return [s.job_id for s in result.starts], result.head


def test_usage_halves_every_half_life() -> None:
    assert decayed(1000.0, NOW, NOW + 7 * DAY, 7 * DAY) == 500.0
    assert math.isclose(decayed(1000.0, NOW, NOW + 14 * DAY, 7 * DAY), 250.0)
    assert decayed(1000.0, NOW, NOW - 5, 7 * DAY) == 1000.0
    assert math.isclose(add(1000.0, NOW, 10.0, NOW + 7 * DAY, 7 * DAY), 510.0)


def test_accrued_usage_is_the_integral_of_decayed_seconds() -> None:
    # 2 GPUs for one half-life: each second used decays to between 1/2 and 1 of itself.
    value = accrued(2.0, NOW, NOW + DAY, DAY)
    steps = 100_000
    numeric = sum(2.0 * DAY / steps * 0.5 ** ((i + 0.5) / steps) for i in range(steps))
    assert math.isclose(value, numeric, rel_tol=1e-9)
    assert math.isclose(accrued(3.0, NOW, NOW + 1.0, 1e9), 3.0, rel_tol=1e-9)


@given(
    st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0.1, 100.0), st.floats(60.0, 1e7),
)
def test_accrual_in_steps_equals_accrual_at_once(first: float, second: float, rate: float, half_life: float) -> None:
    stepped = add(accrued(rate, 0.0, first, half_life), first, accrued(rate, first, first + second, half_life),
                  first + second, half_life)
    assert math.isclose(stepped, accrued(rate, 0.0, first + second, half_life), rel_tol=1e-9, abs_tol=1e-6)


def test_the_startup_with_less_recent_usage_goes_first() -> None:
    pending = [job("a1", "a", at=NOW - 500), job("b1", "b", at=NOW - 10)]
    assert first_started(pending, {"a": 5000.0, "b": 100.0}) == (["b1"], "a1")
    assert first_started(pending, {"a": 100.0, "b": 5000.0}) == (["a1"], "b1")


def test_priority_orders_jobs_within_a_startup_but_not_across_startups() -> None:
    pending = [job("a-low", "a", at=NOW - 500), job("a-high", "a", at=NOW - 10, priority=5),
               job("b-urgent", "b", priority=100)]
    started, _ = first_started(pending, {"a": 0.0, "b": 10.0}, free=3)
    assert started == ["a-high", "b-urgent", "a-low"]


def test_older_then_id_breaks_ties_within_a_startup() -> None:
    pending = [job("x2", "a", at=NOW - 10), job("x3", "a", at=NOW - 500), job("x1", "a", at=NOW - 10)]
    started, _ = first_started(pending, {}, free=3)
    assert started == ["x3", "x1", "x2"]


def test_equal_startups_alternate_when_many_gpus_free_at_once() -> None:
    pending = [job(f"{s}{i}", s, at=NOW - 100 + i) for s in "ab" for i in range(8)]
    started, _ = first_started(pending, {"a": 1000.0, "b": 1000.001}, free=8)
    assert sorted(started) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert [s[0] for s in started] == ["a", "b"] * 4


def test_gpus_a_startup_already_runs_count_against_it() -> None:
    pending = [job(f"{s}{i}", s) for s in "ab" for i in range(4)]
    runs = [running("a-running", "n0", 4, startup="a", ends_in=3600.0)]
    result = plan(pending, runs, nodes(1), {"a": 0.0, "b": 0.0}, NOW)
    assert sorted(s.job_id for s in result.starts) == ["b0", "b1", "b2", "b3"]


def test_a_started_job_counts_by_its_gpus_and_limit() -> None:
    # a's one 4-GPU hour weighs as b's four 1-GPU hours: b gets four starts before a gets its second.
    pending = [job("a1", "a", 4), job("a2", "a", 4)] + [job(f"b{i}", "b", at=NOW - 50 + i) for i in range(4)]
    started, _ = first_started(pending, {"a": 0.0, "b": 0.1}, free=8)
    assert started == ["a1", "b0", "b1", "b2", "b3"]


def test_gpu_type_weight_raises_a_startups_share() -> None:
    cluster = nodes(1, gpu_type="h100", prefix="h") + nodes(1)
    pending = [job("a1", "a", gpu_type="h100"), job("a2", "a", gpu_type="h100")]
    pending += [job(f"b{i}", "b", at=NOW - 10 + i, gpu_type="default") for i in range(1, 5)]
    result = plan(pending, [], cluster, {"a": 0.0, "b": 1.0}, NOW, weights={"h100": 3.0})
    # a's hour on an H100 counts three: b starts three 1-GPU hours before a's second job.
    assert [s.job_id for s in result.starts] == ["a1", "b1", "b2", "b3", "a2", "b4"]


def test_a_startup_at_its_cap_neither_starts_nor_becomes_the_head() -> None:
    pending = [job("a1", "a", at=NOW - 900), job("a2", "a", at=NOW - 800), job("b1", "b", 8)]
    runs = [running("a-running", "n1", 1, startup="a")]
    cluster = nodes(2)
    result = plan(pending, [*runs, running("busy", "n0", 4)], cluster, {}, NOW, max_gpus={"a": 2, "b": None})
    assert [s.job_id for s in result.starts] == ["a1"]
    # a2 would be a's third GPU: a sits out, and b1 (8 GPUs, none free now) is the head.
    assert result.head == "b1"


def test_a_job_larger_than_the_cap_does_not_block_the_queue() -> None:
    pending = [job("a-big", "a", 4, at=NOW - 900), job("b1", "b", 2)]
    result = plan(pending, [], nodes(1), {}, NOW, max_gpus={"a": 2})
    assert [s.job_id for s in result.starts] == ["b1"]
    assert result.head is None

"""GPU-time arithmetic: holds, charges and periodic settles add up to the millisecond."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.metering import charged_ms, due
from vouchers.job_rules import hold_ms

START = 1_800_000_000.0


def test_a_hold_is_gpus_times_the_limit_times_the_weight() -> None:
    assert hold_ms(2, 3600, 1500) == 10_800_000
    assert hold_ms(1, 60, 1000) == 60_000


def test_a_charge_counts_whole_milliseconds_and_stops_at_the_limit() -> None:
    assert charged_ms(2, 1.2344, 1000) == (2468, 2468)
    assert charged_ms(2, 1.2346, 1000) == (2470, 2470)
    assert charged_ms(4, 0.3, 2500) == (1200, 3000)
    assert charged_ms(1, 4.35, 1000) == (4350, 4350)
    assert charged_ms(2, 5000.0, 1000, max_runtime_s=3600) == (7_200_000, 7_200_000)
    assert charged_ms(3, 7200.0, 1333, max_runtime_s=3600)[1] == hold_ms(3, 3600, 1333)
    assert charged_ms(1, -5.0, 1000) == (0, 0)
    # A span between two epoch timestamps is off by a fraction of a microsecond: still 1 ms.
    assert charged_ms(1, (START + 0.001) - START, 1000) == (1, 1)


def test_a_settle_debits_only_what_earlier_settles_did_not() -> None:
    assert due(2, 1000, START, START + 10, 60, already_charged_weighted_ms=0) == 20_000
    assert due(2, 1000, START, START + 15, 60, already_charged_weighted_ms=20_000) == 10_000
    assert due(2, 1000, START, START + 99, 60, already_charged_weighted_ms=100_000) == 20_000
    assert due(2, 1000, START, START + 5, 60, already_charged_weighted_ms=20_000) == 0


@given(
    gpus=st.integers(1, 16),
    weight=st.integers(1, 10_000),
    limit=st.integers(1, 1_000_000),
    ticks=st.lists(st.floats(-10.0, 2e6, allow_nan=False), max_size=40),
    end=st.floats(0.0, 2e6, allow_nan=False),
)
def test_periodic_dues_add_up_to_the_final_charge_and_never_pass_the_hold(
    gpus: int, weight: int, limit: int, ticks: list[float], end: float
) -> None:
    # Ticks in any order (a clock may step back): each settle debits its due, the last settles at `end`.
    charged = 0
    for tick in [*ticks, max([end, *ticks])]:
        step = due(gpus, weight, START, START + tick, limit, charged)
        assert step >= 0
        charged += step
        assert charged <= hold_ms(gpus, limit, weight)
    assert charged == charged_ms(gpus, START + max([end, *ticks]) - START, weight, limit)[1]

"""The Lua scripts are Redis's atomic copy of `vouchers.rules`: random cases must come out as the pure rules say.

Each case builds vouchers (priorities, expiries, start times, voids), reserves and settles on the real Redis
ledger, and checks the allocation, the debit breakdown, the overage and every rate decision against what
the pure functions compute from the vouchers as the ledger reported them just before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import _drop_namespace, redis_url
from vouchers import rules
from vouchers.clock import ManualClock
from vouchers.errors import InsufficientQuota
from vouchers.factory import Stores, open_stores
from vouchers.models import ChargeRef, Limits, Voucher
from vouchers.units import Kind

pytestmark = pytest.mark.redis

M = Kind.MODEL
VOUCHERS = st.lists(
    st.tuples(
        st.integers(0, 2),  # priority
        st.one_of(st.none(), st.integers(1, 6)),  # expires this many tens of seconds from now, or never
        st.sampled_from([-10, 0, 15]),  # effective this many seconds from now
        st.integers(1, 60),  # amount
        st.booleans(),  # voided
    ),
    min_size=0,
    max_size=6,
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _on_redis(case: Callable[[Stores, ManualClock], Awaitable[None]]) -> None:
    async def run() -> None:
        namespace = f"test-lua-{uuid.uuid4().hex[:12]}"
        clock = ManualClock()
        stores = await open_stores(redis_url(), data_dir=Path("/nonexistent"), clock=clock, namespace=namespace)
        try:
            await case(stores, clock)
        finally:
            await stores.close()
            await _drop_namespace(namespace)

    asyncio.run(run())


async def _grant_all(stores: Stores, clock: ManualClock, specs: list[tuple[int, int | None, int, int, bool]]) -> None:
    await stores.directory.create_startup("acme", "Acme")
    now = clock.now()
    for priority, life, start, amount, voided in specs:
        clock.advance(0.001)  # distinct creation times, so "oldest first" decides ties
        expires = None if life is None else now + 10 * life
        effective = now + start
        if expires is not None and expires <= effective:
            expires = effective + 1
        voucher = await stores.ledger.grant("acme", M, amount, effective_at=effective, expires_at=expires,
                                            priority=priority)
        if voided:
            await stores.ledger.void_voucher(voucher.id)


def _expected_settle(vouchers: list[Voucher], allocations: tuple[tuple[str, int], ...], actual: int, now: float
                     ) -> tuple[dict[str, int], int]:
    """The breakdown and overage of a final settle, by the pure rules (as `vouchers.ledger` states them)."""
    by_id = {v.id: v for v in vouchers}
    parts = sorted((by_id[vid] for vid, _ in allocations), key=rules.burn_key)
    held = dict(allocations)
    from_hold, left = rules.allocate(((v.id, held[v.id] if rules.in_force(v, now) else 0) for v in parts), actual)
    taken = dict(from_hold)
    # A final settle frees the rest of the hold: its vouchers' room counts for the debit from free capacity.
    after = [replace(v, spent=v.spent + taken.get(v.id, 0), held=v.held - held.get(v.id, 0)) for v in vouchers]
    from_free, left = rules.allocate(((v.id, rules.free(v)) for v in rules.burn_order(after, now)), left)
    breakdown = dict(from_hold)
    for vid, take in from_free:
        breakdown[vid] = breakdown.get(vid, 0) + take
    return breakdown, left


@SETTINGS
@given(specs=VOUCHERS, amount=st.integers(0, 150), actual=st.integers(0, 200), later=st.integers(0, 40))
def test_reserve_and_settle_follow_the_pure_rules(
    specs: list[tuple[int, int | None, int, int, bool]], amount: int, actual: int, later: int
) -> None:
    async def case(stores: Stores, clock: ManualClock) -> None:
        await _grant_all(stores, clock, specs)
        before = await stores.ledger.list_vouchers("acme")
        room = [(v.id, rules.free(v)) for v in rules.burn_order(before, clock.now())]
        taken, left = rules.allocate(room, amount)
        if left:
            with pytest.raises(InsufficientQuota):
                await stores.ledger.reserve("acme", M, amount, ttl_s=300, idempotency_key="r")
            return
        hold = await stores.ledger.reserve("acme", M, amount, ttl_s=300, idempotency_key="r")
        assert list(hold.allocations) == taken
        clock.advance(later)  # some vouchers may expire or take effect in between
        vouchers = await stores.ledger.list_vouchers("acme")
        breakdown, overage = _expected_settle(vouchers, hold.allocations, actual, clock.now())
        line = await stores.ledger.settle(hold.id, actual, ChargeRef("req"))
        assert (dict(line.breakdown), line.overage, line.amount) == (breakdown, overage, actual - overage)

    _on_redis(case)


@SETTINGS
@given(
    rpm=st.one_of(st.none(), st.integers(0, 5)),
    tpm=st.one_of(st.none(), st.integers(0, 300)),
    calls=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 120), st.sampled_from([0.0, 7.5, 30.0, 61.0])),
                   min_size=1, max_size=12),
)
def test_rate_windows_follow_the_pure_rules(rpm: int | None, tpm: int | None,
                                            calls: list[tuple[int, int, float]]) -> None:
    limits = Limits(rpm=rpm, tpm=tpm)

    async def case(stores: Stores, clock: ManualClock) -> None:
        counted: dict[int, tuple[int, int]] = {}
        for requests, tokens, wait in calls:
            clock.advance(wait)
            window, reset_s = rules.rate_window(clock.now())
            used_r, used_t = counted.get(window, (0, 0))
            allowed = rules.rate_allows(limits, used_r, used_t, requests, tokens)
            if allowed:
                used_r, used_t = used_r + requests, used_t + tokens
                counted[window] = (used_r, used_t)
            if rpm is None and tpm is None:
                used_r = used_t = 0
            expected = rules.rate_decision(limits, allowed, used_r, used_t, reset_s)
            decision = await stores.rates.rate_limit("acme", limits, requests=requests, tokens=tokens)
            assert decision == expected

    _on_redis(case)

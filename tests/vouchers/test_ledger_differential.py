"""The same random operations on the SQLite and the Redis stores must leave the same ledger.

Each step runs on both stores (one shared manual clock) and compares the outcomes (the record, or the
error's type and param); after each step balances, vouchers, holds, journal lines and usage totals
must match. Ids are random per store, so Redis ids are translated to the SQLite ones before comparing.
Times move by fractions that are not exact in binary and land exactly on expiries (`now == expires_at`);
amounts reach 2^53 - 1; settle keys include "".
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test

from tests.conftest import _drop_namespace, redis_url
from vouchers.clock import ManualClock
from vouchers.errors import InsufficientQuota, ShuqiError
from vouchers.factory import Stores, open_stores
from vouchers.models import ChargeRef, Hold, Voucher
from vouchers.units import MAX_AMOUNT, Kind

pytestmark = pytest.mark.redis

STARTUPS = ("acme", "beta")
KINDS = st.sampled_from([Kind.MODEL, Kind.COMPUTE])
AMOUNTS = st.integers(1, 120) | st.sampled_from([2**52, MAX_AMOUNT - 1, MAX_AMOUNT])
SECONDS = st.sampled_from([0.1, 0.3, 0.5, 1, 7, 30, 90])
SETTLE_KEYS = st.none() | st.sampled_from(["", "k1", "k2"])

Pair = tuple[str, str]  # (SQLite id, Redis id) of one voucher or hold
Call = Callable[[Stores, int], Awaitable[Any]]  # an operation on one store; the int picks its side of a Pair


class DifferentialMachine(RuleBasedStateMachine):
    vouchers = Bundle("vouchers")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = ManualClock(1_800_000_000.123456789)
        self.dir = Path(tempfile.mkdtemp(prefix="shuqi-diff-"))
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        self.ids: dict[str, str] = {}  # Redis id -> SQLite id
        self.hold_pairs: list[Pair] = []
        self.times: list[float] = []  # starts and expiries, to land on exactly
        url = f"sqlite:///{self.dir / 'ledger.db'}"
        self.stores: list[Stores] = []
        self.stores.append(self.run(open_stores(url, data_dir=self.dir, clock=self.clock)))
        self.stores.append(
            self.run(open_stores(redis_url(), data_dir=self.dir, clock=self.clock, namespace=self.namespace))
        )
        for startup in STARTUPS:
            self.both(_create(startup))

    def run(self, aw: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await aw

        return self.runner.run(wrapped())

    def teardown(self) -> None:
        try:
            for store in self.stores:
                self.run(store.close())
            self.run(_drop_namespace(self.namespace))
        finally:
            self.runner.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, call: Call) -> tuple[Any, Any]:
        """Run the call on both stores; the outcomes must match once Redis ids are translated."""
        lite, red = (self._outcome(call, side) for side in (0, 1))
        if isinstance(lite, Voucher | Hold) and isinstance(red, Voucher | Hold):
            self.ids.setdefault(red.id, lite.id)
        assert self.norm(red) == lite
        return lite, red

    def _outcome(self, call: Call, side: int) -> Any:
        try:
            return self.run(call(self.stores[side], side))
        except ShuqiError as exc:
            # Other messages name ids, which differ per store; InsufficientQuota's names amounts only.
            return (type(exc).__name__, exc.param, exc.message if isinstance(exc, InsufficientQuota) else "")

    def norm(self, value: Any) -> Any:
        """A Redis record with its ids replaced by the SQLite ones."""
        if isinstance(value, str):
            if value.startswith("settle:"):  # the key of a final settle without one names the hold
                return "settle:" + self.ids.get(value[7:], value[7:])
            return self.ids.get(value, value)
        if isinstance(value, list | tuple):
            return type(value)(self.norm(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self.norm(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return dataclasses.replace(value, **changes)
        return value

    @rule(
        target=vouchers,
        startup=st.sampled_from(STARTUPS),
        kind=KINDS,
        amount=AMOUNTS,
        priority=st.integers(0, 2),
        delay=st.sampled_from([0, 0, 0, -5, 30]),
        life=st.none() | SECONDS | st.sampled_from([60, 300]),
    )
    def grant(self, startup: str, kind: Kind, amount: int, priority: int, delay: float, life: float | None) -> Pair:
        start = self.clock.now() + delay
        expires = None if life is None else start + life
        lite, red = self.both(
            lambda s, _: s.ledger.grant(startup, kind, amount, effective_at=start, expires_at=expires,
                                        priority=priority)
        )
        self.times += [start] if expires is None else [start, expires]
        self.clock.advance(0.25)  # distinct grant times: burn order never falls back to the random ids
        return lite.id, red.id

    @rule(voucher=vouchers)
    def void(self, voucher: Pair) -> None:
        self.both(lambda s, side: s.ledger.void_voucher(voucher[side]))

    @rule(
        target=holds,
        startup=st.sampled_from(STARTUPS),
        kind=KINDS,
        amount=AMOUNTS,
        ttl=SECONDS,
        key=st.integers(0, 3),
    )
    def reserve(self, startup: str, kind: Kind, amount: int, ttl: float, key: int) -> Any:
        lite, red = self.both(
            lambda s, _: s.ledger.reserve(startup, kind, amount, ttl_s=ttl, idempotency_key=f"r{key}"))
        if not isinstance(lite, Hold) or (lite.id, red.id) in self.hold_pairs:
            return multiple()
        self.times.append(lite.expires_at)
        self.hold_pairs.append((lite.id, red.id))
        return lite.id, red.id

    @rule(hold=holds, actual=st.integers(0, 150), final=st.booleans(), key=SETTLE_KEYS)
    def settle(self, hold: Pair, actual: int, final: bool, key: str | None) -> None:
        ref = ChargeRef(f"req-{key}", model="m1", prompt_tokens=3, completion_tokens=4, gpu_type="a100")
        self.both(lambda s, side: s.ledger.settle(hold[side], actual, ref, final=final, idempotency_key=key))

    @rule(
        charges=st.lists(st.tuples(st.none() | holds, st.integers(0, 150), st.sampled_from(["m1", "m2"])),
                         min_size=2, max_size=6),
    )
    def charge_together(self, charges: list[tuple[Pair | None, int, str]]) -> None:
        """Charges made at once (one batch of script calls on Redis), repeats and unknown holds among them."""

        async def call(s: Stores, side: int) -> list[Any]:
            refs = [ChargeRef(f"c{i}", model=m, prompt_tokens=i, completion_tokens=a) for i, (_, a, m) in
                    enumerate(charges)]
            outcomes = await asyncio.gather(*(
                s.ledger.charge(hold[side] if hold else "hold_missing", actual, ref)
                for (hold, actual, _), ref in zip(charges, refs, strict=True)
            ), return_exceptions=True)
            return [(type(o).__name__, o.param) if isinstance(o, ShuqiError) else o for o in outcomes]

        self.both(call)

    @rule(hold=holds)
    def release(self, hold: Pair) -> None:
        self.both(lambda s, side: s.ledger.release(hold[side]))

    @rule(hold=holds, ttl=SECONDS, add=st.integers(0, 50) | st.just(MAX_AMOUNT))
    def extend(self, hold: Pair, ttl: float, add: int) -> None:
        lite, _ = self.both(lambda s, side: s.ledger.extend(hold[side], ttl_s=ttl, add_amount=add))
        if isinstance(lite, Hold):
            self.times.append(lite.expires_at)

    @rule(seconds=SECONDS)
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data())
    def land_on_a_boundary(self, data: st.DataObject) -> None:
        ahead = sorted({t for t in self.times if t >= self.clock.now()})
        if ahead:
            self.clock.set(data.draw(st.sampled_from(ahead)))

    @rule()
    def reap(self) -> None:
        self.both(lambda s, _: s.ledger.reap_holds())

    @invariant()
    def same_ledger(self) -> None:
        for startup in STARTUPS:
            self.both(_balance(startup))
            self.both(_vouchers(startup))
            self.both(_journal(startup))
        for pair in self.hold_pairs:
            self.both(_hold(pair))
        self.both(lambda s, _: s.journal.journal())
        self.both(lambda s, _: s.journal.usage_totals())


def _create(startup: str) -> Call:
    return lambda s, _: s.directory.create_startup(startup, startup.title())


def _balance(startup: str) -> Call:
    return lambda s, _: s.ledger.balance(startup)


def _vouchers(startup: str) -> Call:
    return lambda s, _: s.ledger.list_vouchers(startup)


def _journal(startup: str) -> Call:
    return lambda s, _: s.journal.journal(startup)


def _hold(pair: Pair) -> Call:
    return lambda s, side: s.ledger.get_hold(pair[side])


def test_sqlite_and_redis_keep_the_same_ledger() -> None:
    run_state_machine_as_test(
        DifferentialMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )

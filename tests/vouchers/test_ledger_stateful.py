"""Random sequences of ledger operations against a small reference model, on every backend.

After every step: remaining >= 0, granted = spent + held + remaining per kind, the journal adds up to
what every voucher (in force or not) has spent, no idempotency key appears twice in the journal, and
each voucher's spent and held equal the model's.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import _drop_namespace, redis_url
from vouchers import rules
from vouchers.clock import ManualClock
from vouchers.errors import Conflict, InsufficientQuota, InvalidRequest
from vouchers.factory import Stores, open_stores
from vouchers.models import ChargeRef, HoldStatus
from vouchers.units import Kind

KINDS = st.sampled_from([Kind.MODEL, Kind.COMPUTE])
STARTUP = "acme"


@dataclass
class MVoucher:
    id: str
    kind: Kind
    amount: int
    effective_at: float
    expires_at: float | None
    priority: int
    created_at: float
    voided_at: float | None = None
    spent: int = 0
    held: int = 0


@dataclass
class MHold:
    id: str
    kind: Kind
    allocations: dict[str, int]
    expires_at: float
    status: HoldStatus = HoldStatus.OPEN
    final_seq: int | None = None


@dataclass
class Model:
    """The ledger rules of `vouchers.ledger`, written as plainly as possible over the pure `vouchers.rules`."""

    vouchers: dict[str, MVoucher] = field(default_factory=dict)
    holds: dict[str, MHold] = field(default_factory=dict)
    reserve_keys: dict[str, str] = field(default_factory=dict)
    settle_keys: dict[str, int] = field(default_factory=dict)
    journal_lines: int = 0

    def burn_order(self, kind: Kind, now: float) -> list[MVoucher]:
        return rules.burn_order((v for v in self.vouchers.values() if v.kind is kind), now)

    def available(self, kind: Kind, now: float) -> int:
        return sum(rules.free(v) for v in self.burn_order(kind, now))

    def release(self, hold: MHold) -> None:
        if hold.status is HoldStatus.OPEN:
            for voucher_id, part in hold.allocations.items():
                self.vouchers[voucher_id].held -= part
            hold.allocations = {}
            hold.status = HoldStatus.RELEASED

    def release_expired(self, now: float) -> int:
        expired = [h for h in self.holds.values() if h.status is HoldStatus.OPEN and h.expires_at <= now]
        for hold in expired:
            self.release(hold)
        return len(expired)

    def allocate(self, kind: Kind, amount: int, now: float) -> dict[str, int] | None:
        if self.available(kind, now) < amount:
            return None
        live = self.burn_order(kind, now)
        taken, _ = rules.allocate(((v.id, rules.free(v)) for v in live), amount)
        for voucher_id, take in taken:
            self.vouchers[voucher_id].held += take
        return dict(taken)

    def debit(self, hold: MHold, actual: int, final: bool, now: float) -> tuple[int, int]:
        """(amount debited, overage) of a settle that is not a replay."""
        left = actual
        if hold.status is HoldStatus.OPEN:
            parts = sorted((self.vouchers[i] for i in hold.allocations), key=rules.burn_key)
            taken, left = rules.allocate(
                ((v.id, hold.allocations[v.id] if rules.in_force(v, now) else 0) for v in parts), left)
            for voucher_id, take in taken:
                self.vouchers[voucher_id].spent += take
                self.vouchers[voucher_id].held -= take
                hold.allocations[voucher_id] -= take
            if final:
                self.release(hold)
        live = self.burn_order(hold.kind, now)
        taken, left = rules.allocate(((v.id, rules.free(v)) for v in live), left)
        for voucher_id, take in taken:
            self.vouchers[voucher_id].spent += take
        if final:
            hold.status = HoldStatus.SETTLED
        self.journal_lines += 1
        return actual - left, left


class LedgerMachine(RuleBasedStateMachine):
    backend = "sqlite"

    vouchers = Bundle("vouchers")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = ManualClock()
        self.dir = Path(tempfile.mkdtemp(prefix="shuqi-stateful-"))
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        url = redis_url() if self.backend == "redis" else f"sqlite:///{self.dir / 'ledger.db'}"
        self.store: Stores = self.run(open_stores(url, data_dir=self.dir, clock=self.clock, namespace=self.namespace))
        self.run(self.store.directory.create_startup(STARTUP, "Acme"))
        self.model = Model()

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            if self.backend == "redis":
                self.run(_drop_namespace(self.namespace))
        finally:
            self.runner.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def now(self) -> float:
        return self.clock.now()

    @rule(
        target=vouchers,
        kind=KINDS,
        amount=st.integers(1, 100),
        priority=st.integers(0, 2),
        delay=st.sampled_from([0, 0, 0, 30]),
        life=st.none() | st.integers(1, 300),
    )
    def grant(self, kind: Kind, amount: int, priority: int, delay: int, life: int | None) -> str:
        effective = self.now + delay
        expires = None if life is None else effective + life
        v = self.run(
            self.store.ledger.grant(STARTUP, kind, amount, effective_at=effective, expires_at=expires,
                                    priority=priority)
        )
        self.model.vouchers[v.id] = MVoucher(v.id, kind, amount, effective, expires, priority, v.created_at)
        self.clock.advance(1)  # distinct grant times keep "oldest first" meaningful
        return str(v.id)

    @rule(voucher=vouchers)
    def void(self, voucher: str) -> None:
        self.run(self.store.ledger.void_voucher(voucher))
        modelled = self.model.vouchers[voucher]
        modelled.voided_at = modelled.voided_at if modelled.voided_at is not None else self.clock.now()

    @rule(target=holds, kind=KINDS, amount=st.integers(0, 120), ttl=st.integers(1, 120), key=st.integers(0, 20))
    def reserve(self, kind: Kind, amount: int, ttl: int, key: int) -> Any:
        idem = f"r{key}"
        known = self.model.reserve_keys.get(idem)
        if known is not None:
            hold = self.run(self.store.ledger.reserve(STARTUP, kind, amount, ttl_s=ttl, idempotency_key=idem))
            assert hold.id == known and hold.replayed
            return multiple()
        self.model.release_expired(self.now)
        taken = self.model.allocate(kind, amount, self.now)
        if taken is None:
            with pytest.raises(InsufficientQuota):
                self.run(self.store.ledger.reserve(STARTUP, kind, amount, ttl_s=ttl, idempotency_key=idem))
            return multiple()
        hold = self.run(self.store.ledger.reserve(STARTUP, kind, amount, ttl_s=ttl, idempotency_key=idem))
        assert dict(hold.allocations) == taken and not hold.replayed
        self.model.holds[hold.id] = MHold(hold.id, kind, taken, self.now + ttl)
        self.model.reserve_keys[idem] = hold.id
        return hold.id

    @rule(
        hold=holds,
        actual=st.integers(0, 150),
        final=st.booleans(),
        key=st.none() | st.integers(0, 20).map(lambda n: f"s{n}"),
    )
    def settle(self, hold: str, actual: int, final: bool, key: str | None) -> None:
        ref = ChargeRef(f"req-{key}", model="m1", prompt_tokens=1, completion_tokens=2)
        if not final and key is None:
            with pytest.raises(InvalidRequest):
                self.run(self.store.ledger.settle(hold, actual, ref, final=False))
            return
        mhold = self.model.holds[hold]
        replay = self.model.settle_keys.get(key) if key is not None else None
        if replay is None and final and mhold.status is HoldStatus.SETTLED:
            replay = mhold.final_seq
        line = self.run(self.store.ledger.settle(hold, actual, ref, final=final, idempotency_key=key))
        if replay is not None:
            assert line.seq == replay
            return
        assert (line.amount, line.overage) == self.model.debit(mhold, actual, final, self.now)
        if key is not None:
            self.model.settle_keys[key] = line.seq
        if final:
            mhold.final_seq = line.seq

    @precondition(lambda self: bool(self.model.settle_keys))
    @rule(data=st.data(), hold=holds, actual=st.integers(0, 150))
    def retry_settle(self, data: st.DataObject, hold: str, actual: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.model.settle_keys)))
        line = self.run(self.store.ledger.settle(hold, actual, ChargeRef("retry"), final=True, idempotency_key=key))
        assert line.seq == self.model.settle_keys[key]

    @rule(hold=holds)
    def release(self, hold: str) -> None:
        released = self.run(self.store.ledger.release(hold))
        self.model.release(self.model.holds[hold])
        assert released.status is self.model.holds[hold].status

    @rule(hold=holds, ttl=st.integers(1, 120), add=st.integers(0, 50))
    def extend(self, hold: str, ttl: int, add: int) -> None:
        mhold = self.model.holds[hold]
        if mhold.status is not HoldStatus.OPEN or mhold.expires_at <= self.now:
            with pytest.raises(Conflict):
                self.run(self.store.ledger.extend(hold, ttl_s=ttl, add_amount=add))
            return
        taken: dict[str, int] | None = {}
        if add:
            self.model.release_expired(self.now)
            taken = self.model.allocate(mhold.kind, add, self.now)
        if taken is None:
            with pytest.raises(InsufficientQuota):
                self.run(self.store.ledger.extend(hold, ttl_s=ttl, add_amount=add))
            return
        extended = self.run(self.store.ledger.extend(hold, ttl_s=ttl, add_amount=add))
        for voucher_id, part in taken.items():
            mhold.allocations[voucher_id] = mhold.allocations.get(voucher_id, 0) + part
        mhold.expires_at = self.now + ttl
        assert extended.expires_at == mhold.expires_at
        assert dict(extended.allocations) == {v: a for v, a in mhold.allocations.items() if a}

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def reap(self) -> None:
        assert self.run(self.store.ledger.reap_holds()) == self.model.release_expired(self.now)

    @invariant()
    def ledger_adds_up(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        balance = await self.store.ledger.balance(STARTUP)
        for kind in Kind:
            figures = balance.of(kind)
            assert figures.remaining >= 0
            assert figures.granted == figures.spent + figures.held + figures.remaining
            assert figures.remaining == self.model.available(kind, self.now)
        vouchers = await self.store.ledger.list_vouchers(STARTUP)
        assert {v.id: (v.spent, v.held) for v in vouchers} == {
            v.id: (v.spent, v.held) for v in self.model.vouchers.values()
        }
        lines = await self.store.journal.journal(STARTUP)
        assert sum(line.amount for line in lines) == sum(v.spent for v in vouchers)
        keys = [line.idempotency_key for line in lines]
        assert len(keys) == len(set(keys)) == self.model.journal_lines


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_ledger_state_machine(backend: str) -> None:
    machine = type(f"LedgerMachine_{backend}", (LedgerMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )

"""One test per ledger rule of `vouchers.ledger`, on every backend, with time moved by hand."""

from __future__ import annotations

import asyncio

import pytest

from vouchers.clock import ManualClock
from vouchers.errors import AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.factory import Stores
from vouchers.keys import hash_secret, new_id, new_secret
from vouchers.models import ApiKey, ChargeRef, HoldStatus, Limits, Price, WorkerRecord
from vouchers.units import MAX_AMOUNT, Kind

M = Kind.MODEL
C = Kind.COMPUTE


def ref(n: int = 1, model: str | None = "m1", prompt: int = 10, completion: int = 20) -> ChargeRef:
    return ChargeRef(f"req-{n}", model=model, prompt_tokens=prompt, completion_tokens=completion)


async def acme(store: Stores, startup_id: str = "acme") -> str:
    await store.directory.create_startup(startup_id, startup_id.title())
    return startup_id


async def figures(store: Stores, startup_id: str = "acme", kind: Kind = M) -> tuple[int, int, int, int]:
    """(granted, spent, held, remaining), checking that they add up."""
    b = (await store.ledger.balance(startup_id)).of(kind)
    assert b.granted == b.spent + b.held + b.remaining
    return b.granted, b.spent, b.held, b.remaining


async def spent_on(store: Stores, voucher_id: str) -> int:
    voucher = await store.ledger.get_voucher(voucher_id)
    assert voucher is not None
    return voucher.spent


# startups, keys, vouchers


async def test_startups(store: Stores) -> None:
    await acme(store)
    with pytest.raises(Conflict):
        await store.directory.create_startup("acme", "Again")
    await acme(store, "beta")
    assert sorted(s.id for s in await store.directory.list_startups()) == ["acme", "beta"]
    got = await store.directory.get_startup("acme")
    assert got is not None and got.name == "Acme"
    assert await store.directory.get_startup("nobody") is None


async def test_keys_by_hash_and_revocation(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    secret = new_secret()
    key = ApiKey(new_id("key"), "acme", "ci", hash_secret(secret), secret[:12], clock.now())
    await store.directory.add_key(key)
    found = await store.directory.key_by_hash(hash_secret(secret))
    assert found is not None and found.id == key.id and found.active
    assert await store.directory.key_by_hash(hash_secret(new_secret())) is None
    assert [k.id for k in await store.directory.list_keys("acme")] == [key.id]

    clock.advance(5)
    revoked = await store.directory.revoke_key(key.id)
    assert revoked.revoked_at == clock.now()
    clock.advance(5)
    again = await store.directory.revoke_key(key.id)
    assert again.revoked_at == revoked.revoked_at
    found = await store.directory.key_by_hash(hash_secret(secret))
    assert found is not None and not found.active
    with pytest.raises(NotFound):
        await store.directory.revoke_key("key_unknown")
    stray = ApiKey(new_id("key"), "nobody", "x", hash_secret(new_secret()), "sk", clock.now())
    with pytest.raises(NotFound):
        await store.directory.add_key(stray)


async def test_admission_checks_a_remembered_key_in_the_same_step(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    key = ApiKey(new_id("key"), "acme", "ci", hash_secret(new_secret()), "sk", clock.now())
    await store.directory.add_key(key)
    limits = Limits(rpm=10)
    hold = await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="a", key_id=key.id)
    assert hold.amount == 10
    decision = await store.rates.rate_limit("acme", limits, requests=1, tokens=5, key_id=key.id)
    assert decision.allowed and decision.remaining_requests == 9

    await store.directory.revoke_key(key.id)
    before = await store.ledger.balance("acme")
    with pytest.raises(AuthenticationError):
        await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="b", key_id=key.id)
    with pytest.raises(AuthenticationError):  # not even a replay of an earlier hold
        await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="a", key_id=key.id)
    with pytest.raises(AuthenticationError):
        await store.rates.rate_limit("acme", limits, requests=1, tokens=5, key_id=key.id)
    assert await store.ledger.balance("acme") == before
    counted = await store.rates.rate_limit("acme", limits, requests=1, tokens=5)  # the refused call counted nothing
    assert counted.remaining_requests == 8
    assert (await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="c")).amount == 10  # no key: no check


async def test_grant_and_balance(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    await store.ledger.grant("acme", C, 7_200_000)
    assert await figures(store) == (100, 0, 0, 100)
    assert await figures(store, kind=C) == (7_200_000, 0, 0, 7_200_000)
    assert len((await store.ledger.balance("acme")).vouchers) == 2


@pytest.mark.parametrize("amount", [0, -5])
async def test_grant_rejects_bad_amount(store: Stores, amount: int) -> None:
    await acme(store)
    with pytest.raises(InvalidRequest) as info:
        await store.ledger.grant("acme", M, amount)
    assert info.value.param == "amount"


async def test_grant_records_its_terms(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    start, end = clock.now() + 10, clock.now() + 3600
    granted = await store.ledger.grant("acme", C, 500, effective_at=start, expires_at=end, priority=3, note="batch 7")
    stored = await store.ledger.get_voucher(granted.id)
    assert stored is not None and stored == granted
    assert (stored.kind, stored.amount, stored.effective_at, stored.expires_at) == (C, 500, start, end)
    assert (stored.priority, stored.note, stored.voided_at, stored.spent, stored.held) == (3, "batch 7", None, 0, 0)
    assert [v.id for v in await store.ledger.list_vouchers("acme", C)] == [granted.id]
    assert await store.ledger.list_vouchers("acme", M) == []
    with pytest.raises(InvalidRequest) as info:
        await store.ledger.grant("acme", M, 100, effective_at=start, expires_at=start)
    assert info.value.param == "expires_at"


async def test_unknown_startup(store: Stores) -> None:
    with pytest.raises(NotFound):
        await store.ledger.grant("nobody", M, 100)
    with pytest.raises(NotFound):
        await store.ledger.balance("nobody")
    with pytest.raises(NotFound):
        await store.catalog.set_limits("nobody", Limits(rpm=1))
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("nobody", M, 1, ttl_s=30, idempotency_key="k")


async def test_voucher_not_yet_effective(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100, effective_at=clock.now() + 100)
    assert await figures(store) == (0, 0, 0, 0)
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("acme", M, 10, ttl_s=30, idempotency_key="early")
    clock.advance(100)
    hold = await store.ledger.reserve("acme", M, 10, ttl_s=30, idempotency_key="on-time")
    assert hold.amount == 10
    assert await figures(store) == (100, 0, 10, 90)


async def test_expired_voucher_offers_nothing_new(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    voucher = await store.ledger.grant("acme", M, 100, expires_at=clock.now() + 60)
    hold = await store.ledger.reserve("acme", M, 30, ttl_s=300, idempotency_key="a")
    await store.ledger.settle(hold.id, 30, ref())
    clock.advance(60)
    assert await figures(store) == (0, 0, 0, 0)
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("acme", M, 1, ttl_s=30, idempotency_key="b")
    assert await spent_on(store, voucher.id) == 30


# burn order


async def test_burn_order_priority_first(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    late = await store.ledger.grant("acme", M, 100, priority=1)
    clock.advance(1)
    first = await store.ledger.grant("acme", M, 100, priority=0)
    hold = await store.ledger.reserve("acme", M, 150, ttl_s=30, idempotency_key="k")
    assert hold.allocations == ((first.id, 100), (late.id, 50))
    line = await store.ledger.settle(hold.id, 120, ref())
    assert line.breakdown == ((first.id, 100), (late.id, 20))
    assert await spent_on(store, first.id) == 100
    assert await spent_on(store, late.id) == 20


async def test_burn_order_soonest_expiry_then_none(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    never = await store.ledger.grant("acme", M, 10)
    later = await store.ledger.grant("acme", M, 10, expires_at=clock.now() + 1000)
    sooner = await store.ledger.grant("acme", M, 10, expires_at=clock.now() + 500)
    hold = await store.ledger.reserve("acme", M, 25, ttl_s=30, idempotency_key="k")
    assert hold.allocations == ((sooner.id, 10), (later.id, 10), (never.id, 5))


async def test_burn_order_oldest_first(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    old = await store.ledger.grant("acme", M, 10)
    clock.advance(1)
    new = await store.ledger.grant("acme", M, 10)
    hold = await store.ledger.reserve("acme", M, 15, ttl_s=30, idempotency_key="k")
    assert hold.allocations == ((old.id, 10), (new.id, 5))


async def test_kinds_do_not_mix(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", C, 1000)
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("acme", M, 1, ttl_s=30, idempotency_key="k")


# reserve


async def test_reserve_is_all_or_nothing(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 60)
    await store.ledger.grant("acme", M, 40)
    with pytest.raises(InsufficientQuota) as info:
        await store.ledger.reserve("acme", M, 101, ttl_s=30, idempotency_key="too-much")
    assert info.value.param == "amount"
    assert await figures(store) == (100, 0, 0, 100)
    hold = await store.ledger.reserve("acme", M, 100, ttl_s=30, idempotency_key="exact")
    assert sum(part for _, part in hold.allocations) == 100
    assert await figures(store) == (100, 0, 100, 0)


@pytest.mark.parametrize("amount", [-1, -100])
async def test_reserve_rejects_bad_amount(store: Stores, amount: int) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    with pytest.raises(InvalidRequest) as info:
        await store.ledger.reserve("acme", M, amount, ttl_s=30, idempotency_key="k")
    assert info.value.param == "amount"
    assert await figures(store) == (100, 0, 0, 100)


async def test_a_zero_hold_takes_nothing_and_its_settle_journals_the_tokens(store: Stores) -> None:
    await acme(store)  # no voucher at all: a free request still goes through
    hold = await store.ledger.reserve("acme", M, 0, ttl_s=30, idempotency_key="free")
    assert (hold.amount, hold.allocations, hold.status) == (0, (), HoldStatus.OPEN)
    assert await figures(store) == (0, 0, 0, 0)
    await store.ledger.charge(hold.id, 0, ChargeRef("r-free", model="m1", prompt_tokens=7, completion_tokens=3))
    [line] = await store.journal.journal("acme")
    assert (line.amount, line.overage, line.ref.prompt_tokens, line.ref.completion_tokens) == (0, 0, 7, 3)
    totals = {(t.startup_id, t.kind, t.label): (t.amount, t.prompt_tokens, t.completion_tokens)
              for t in await store.journal.usage_totals()}
    assert totals == {("acme", M, "m1"): (0, 7, 3)}
    assert await figures(store) == (0, 0, 0, 0)
    with pytest.raises(NotFound):
        await store.ledger.reserve("nobody", M, 0, ttl_s=30, idempotency_key="free")


async def test_reserve_same_key_holds_once(store: Stores) -> None:
    await acme(store)
    await acme(store, "beta")
    await store.ledger.grant("acme", M, 100)
    await store.ledger.grant("beta", M, 100)
    first = await store.ledger.reserve("acme", M, 30, ttl_s=30, idempotency_key="req-1")
    again = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="req-1")
    assert again.id == first.id and again.amount == 30
    assert not first.replayed and again.replayed  # the caller can tell it did not create the hold
    assert await figures(store) == (100, 0, 30, 70)
    # Keys are per startup: another startup's identical key is its own hold.
    other = await store.ledger.reserve("beta", M, 30, ttl_s=30, idempotency_key="req-1")
    assert other.id != first.id
    assert await figures(store, "beta") == (100, 0, 30, 70)


# settle


async def test_settle_debits_and_frees_the_rest(store: Stores) -> None:
    await acme(store)
    voucher = await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 80, ttl_s=30, idempotency_key="k")
    line = await store.ledger.settle(hold.id, 60, ref())
    assert (line.amount, line.overage, line.breakdown) == (60, 0, ((voucher.id, 60),))
    assert (line.startup_id, line.kind, line.hold_id, line.ref) == ("acme", M, hold.id, ref())
    assert await figures(store) == (100, 60, 0, 40)
    settled = await store.ledger.get_hold(hold.id)
    assert settled is not None and settled.status is HoldStatus.SETTLED and settled.settled == 60


async def test_final_settle_happens_once(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    first = await store.ledger.settle(hold.id, 40, ref())
    second = await store.ledger.settle(hold.id, 45, ref(2))
    assert second.seq == first.seq and second.amount == 40
    assert await figures(store) == (100, 40, 0, 60)
    assert len(await store.journal.journal("acme")) == 1


async def test_charge_is_a_final_settle_that_returns_nothing(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    assert await store.ledger.charge(hold.id, 40, ref()) is None  # type: ignore[func-returns-value]
    await store.ledger.charge(hold.id, 45, ref(2))  # once, like any final settle
    again = await store.ledger.settle(hold.id, 30, ref(3))
    assert (again.amount, again.hold_id, again.ref) == (40, hold.id, ref())
    assert await figures(store) == (100, 40, 0, 60)
    assert len(await store.journal.journal("acme")) == 1
    with pytest.raises(NotFound):
        await store.ledger.charge("hold_missing", 1, ref())


async def test_charges_made_at_once_each_land_as_alone(store: Stores) -> None:
    # Charges made at once share one batch of script calls on Redis (one connection write).
    await acme(store)
    await acme(store, "beta")
    first = await store.ledger.grant("acme", M, 100, priority=0)
    second = await store.ledger.grant("acme", M, 1000, priority=1)
    await store.ledger.grant("beta", M, 100)
    holds = [await store.ledger.reserve("acme", M, 60, ttl_s=30, idempotency_key=f"k{i}") for i in range(3)]
    other = await store.ledger.reserve("beta", M, 10, ttl_s=30, idempotency_key="b")
    gone = await store.ledger.reserve("acme", M, 5, ttl_s=30, idempotency_key="gone")
    await store.ledger.void_voucher(first.id)  # k0's and k1's parts on it go back outside the live vouchers
    outcomes = await asyncio.gather(
        store.ledger.charge(holds[0].id, 50, ref(1)),
        store.ledger.charge(other.id, 7, ref(2)),
        store.ledger.charge(holds[1].id, 90, ref(3)),  # 30 over its hold: from free capacity
        store.ledger.charge(holds[0].id, 20, ref(4)),  # a repeat: charged once
        store.ledger.charge("hold_missing", 1, ref(5)),
        store.ledger.charge(holds[2].id, 0, ref(6)),
        store.ledger.charge(gone.id, 5, ref(7)),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["NoneType"] * 4 + ["NotFound"] + ["NoneType"] * 2
    lines = await store.journal.journal("acme")
    assert [(line.ref.reference, line.amount) for line in lines] == [("req-1", 50), ("req-3", 90), ("req-6", 0),
                                                                     ("req-7", 5)]
    # All on the voucher in force: its own parts first, then its free capacity (k1's 70 over its 20).
    assert await figures(store) == (1000, 145, 0, 855)
    assert await spent_on(store, second.id) == 145
    voided = await store.ledger.get_voucher(first.id)
    assert voided is not None and (voided.spent, voided.held) == (0, 0)
    assert await figures(store, "beta") == (100, 7, 0, 93)


async def test_settle_same_key_charges_once(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    first = await store.ledger.settle(hold.id, 10, ref(), final=False, idempotency_key="chunk-1")
    again = await store.ledger.settle(hold.id, 10, ref(), final=False, idempotency_key="chunk-1")
    assert again.seq == first.seq
    assert await figures(store) == (100, 10, 40, 50)


async def test_settle_with_an_empty_key_charges_once(store: Stores) -> None:
    # "" is a key like any other: Redis once took it for "no key" and charged a retried chunk twice.
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    first = await store.ledger.settle(hold.id, 10, ref(), final=False, idempotency_key="")
    again = await store.ledger.settle(hold.id, 10, ref(), final=False, idempotency_key="")
    assert again.seq == first.seq
    assert await figures(store) == (100, 10, 40, 50)
    assert len(await store.journal.journal("acme")) == 1


async def test_settle_zero_frees_the_hold(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    line = await store.ledger.settle(hold.id, 0, ref())
    assert line.amount == 0 and line.overage == 0
    assert await figures(store) == (100, 0, 0, 100)


async def test_settle_beyond_hold_takes_free_capacity_then_overage(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    first = await store.ledger.grant("acme", M, 100)
    clock.advance(1)
    second = await store.ledger.grant("acme", M, 50)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    line = await store.ledger.settle(hold.id, 180, ref())
    # 50 from the hold, then the free 50 of the same first voucher, then the second voucher.
    assert line.amount == 150 and line.overage == 30
    assert dict(line.breakdown) == {first.id: 100, second.id: 50}
    assert await figures(store) == (150, 150, 0, 0)
    assert await spent_on(store, first.id) == 100


async def test_partial_settle_then_extend_then_final(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 200)
    hold = await store.ledger.reserve("acme", M, 100, ttl_s=30, idempotency_key="job-1")
    await store.ledger.settle(hold.id, 40, ref(), final=False, idempotency_key="job-1:tick-1")
    assert await figures(store) == (200, 40, 60, 100)
    partial = await store.ledger.get_hold(hold.id)
    assert partial is not None and partial.status is HoldStatus.OPEN
    assert partial.settled == 40 and sum(a for _, a in partial.allocations) == 60

    clock.advance(20)
    extended = await store.ledger.extend(hold.id, ttl_s=60, add_amount=50)
    assert extended.expires_at == clock.now() + 60
    assert sum(a for _, a in extended.allocations) == 110
    assert await figures(store) == (200, 40, 110, 50)

    clock.advance(40)  # past the first TTL, within the extended one
    assert await store.ledger.reap_holds() == 0
    line = await store.ledger.settle(hold.id, 70, ref(), idempotency_key="job-1:final")
    assert line.amount == 70
    assert await figures(store) == (200, 110, 0, 90)
    done = await store.ledger.get_hold(hold.id)
    assert done is not None and done.status is HoldStatus.SETTLED and done.settled == 110


async def test_partial_settle_needs_a_key(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    with pytest.raises(InvalidRequest):
        await store.ledger.settle(hold.id, 10, ref(), final=False)
    assert await figures(store) == (100, 0, 50, 50)


async def test_settle_unknown_hold(store: Stores) -> None:
    with pytest.raises(NotFound):
        await store.ledger.settle("hold_unknown", 10, ref())
    with pytest.raises(NotFound):
        await store.ledger.release("hold_unknown")
    assert await store.ledger.get_hold("hold_unknown") is None


# extend


async def test_extend_is_all_or_nothing(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 80, ttl_s=30, idempotency_key="k")
    with pytest.raises(InsufficientQuota) as refused:
        await store.ledger.extend(hold.id, ttl_s=300, add_amount=21)
    assert refused.value.param == "add_amount"
    unchanged = await store.ledger.get_hold(hold.id)
    assert unchanged is not None and unchanged.expires_at == hold.expires_at and unchanged.amount == 80
    assert await figures(store) == (100, 0, 80, 20)


async def test_a_hold_grown_past_2_pow_53_keeps_every_unit(store: Stores) -> None:
    # Each voucher stays below 2^53, but a hold over two may not: Redis once summed it in Lua doubles.
    await acme(store)
    await store.ledger.grant("acme", M, MAX_AMOUNT)
    await store.ledger.grant("acme", M, MAX_AMOUNT)
    hold = await store.ledger.reserve("acme", M, MAX_AMOUNT, ttl_s=30, idempotency_key="k")
    extended = await store.ledger.extend(hold.id, ttl_s=30, add_amount=2)
    assert extended.amount == MAX_AMOUNT + 2
    await store.ledger.settle(hold.id, MAX_AMOUNT, ref(), final=False, idempotency_key="chunk-1")
    await store.ledger.settle(hold.id, 2, ref())
    done = await store.ledger.get_hold(hold.id)
    assert done is not None and (done.amount, done.settled) == (MAX_AMOUNT + 2, MAX_AMOUNT + 2)


async def test_refusal_counts_what_is_available_exactly_near_2_pow_53(store: Stores) -> None:
    # What a 429 says is available: Redis once added a voucher's amount before its spent and held.
    await acme(store)
    await store.ledger.grant("acme", M, MAX_AMOUNT, priority=1)
    await store.ledger.reserve("acme", M, 101, ttl_s=30, idempotency_key="k")
    await store.ledger.grant("acme", M, 90)
    with pytest.raises(InsufficientQuota) as refused:
        await store.ledger.reserve("acme", M, MAX_AMOUNT, ttl_s=30, idempotency_key="all")
    assert f"{MAX_AMOUNT - 11} available" in refused.value.message


async def test_extend_closed_hold_is_a_conflict(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 10, ttl_s=30, idempotency_key="k")
    await store.ledger.release(hold.id)
    with pytest.raises(Conflict):
        await store.ledger.extend(hold.id, ttl_s=30)
    with pytest.raises(NotFound):
        await store.ledger.extend("hold_unknown", ttl_s=30)


# release and reaping


async def test_release_frees_once(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 70, ttl_s=30, idempotency_key="k")
    released = await store.ledger.release(hold.id)
    assert released.status is HoldStatus.RELEASED
    assert await figures(store) == (100, 0, 0, 100)
    await store.ledger.reserve("acme", M, 60, ttl_s=30, idempotency_key="k2")
    again = await store.ledger.release(hold.id)
    assert again.status is HoldStatus.RELEASED
    assert await figures(store) == (100, 0, 60, 40)


async def test_release_after_settle_changes_nothing(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 70, ttl_s=30, idempotency_key="k")
    await store.ledger.settle(hold.id, 50, ref())
    closed = await store.ledger.release(hold.id)
    assert closed.status is HoldStatus.SETTLED
    assert await figures(store) == (100, 50, 0, 50)


async def test_settle_after_release_still_charges(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 70, ttl_s=30, idempotency_key="k")
    await store.ledger.release(hold.id)
    other = await store.ledger.reserve("acme", M, 80, ttl_s=30, idempotency_key="k2")
    line = await store.ledger.settle(hold.id, 30, ref())
    # Only 20 is free now (80 is held by the other request): the rest is overage.
    assert (line.amount, line.overage) == (20, 10)
    assert await figures(store) == (100, 20, 80, 0)
    again = await store.ledger.settle(hold.id, 30, ref())
    assert again.seq == line.seq
    assert (await store.ledger.get_hold(other.id)) is not None


async def test_reaper_releases_expired_holds(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 70, ttl_s=30, idempotency_key="k")
    clock.advance(29)
    assert await store.ledger.reap_holds() == 0
    assert await figures(store) == (100, 0, 70, 30)
    clock.advance(1)
    assert await store.ledger.reap_holds() == 1
    assert await figures(store) == (100, 0, 0, 100)
    reaped = await store.ledger.get_hold(hold.id)
    assert reaped is not None and reaped.status is HoldStatus.RELEASED
    assert await store.ledger.reap_holds() == 0
    # A late settle of a reaped hold is still charged, from free capacity.
    line = await store.ledger.settle(hold.id, 40, ref())
    assert (line.amount, line.overage) == (40, 0)
    assert await figures(store) == (100, 40, 0, 60)


async def test_reserve_frees_expired_holds_of_the_startup(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    stale = await store.ledger.reserve("acme", M, 100, ttl_s=10, idempotency_key="stale")
    clock.advance(10)
    fresh = await store.ledger.reserve("acme", M, 100, ttl_s=10, idempotency_key="fresh")
    assert fresh.amount == 100
    released = await store.ledger.get_hold(stale.id)
    assert released is not None and released.status is HoldStatus.RELEASED
    assert await figures(store) == (100, 0, 100, 0)


async def test_refused_reserve_still_frees_expired_holds(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 100)
    stale = await store.ledger.reserve("acme", M, 60, ttl_s=10, idempotency_key="stale")
    clock.advance(10)
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("acme", M, 101, ttl_s=10, idempotency_key="too-much")
    released = await store.ledger.get_hold(stale.id)
    assert released is not None and released.status is HoldStatus.RELEASED
    assert await figures(store) == (100, 0, 0, 100)


# void


async def test_void_stops_burning_and_keeps_past_usage(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    voucher = await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 30, ttl_s=30, idempotency_key="k")
    await store.ledger.settle(hold.id, 30, ref())
    clock.advance(1)
    voided = await store.ledger.void_voucher(voucher.id)
    assert voided.voided_at == clock.now() and voided.spent == 30
    assert await figures(store) == (0, 0, 0, 0)
    with pytest.raises(InsufficientQuota):
        await store.ledger.reserve("acme", M, 1, ttl_s=30, idempotency_key="k2")
    assert sum(line.amount for line in await store.journal.journal("acme")) == 30
    clock.advance(1)
    again = await store.ledger.void_voucher(voucher.id)
    assert again.voided_at == voided.voided_at
    with pytest.raises(NotFound):
        await store.ledger.void_voucher("vch_unknown")


async def test_settle_skips_a_voucher_voided_under_a_hold(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    first = await store.ledger.grant("acme", M, 50)
    clock.advance(1)
    second = await store.ledger.grant("acme", M, 100)
    hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key="k")
    assert hold.allocations == ((first.id, 50),)
    await store.ledger.void_voucher(first.id)
    line = await store.ledger.settle(hold.id, 40, ref())
    assert line.breakdown == ((second.id, 40),)
    assert await spent_on(store, first.id) == 0
    voided = await store.ledger.get_voucher(first.id)
    assert voided is not None and voided.held == 0
    assert await figures(store) == (100, 40, 0, 60)


# the journal and totals


async def test_journal_lines_and_time_filter(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await acme(store, "beta")
    await store.ledger.grant("acme", M, 1000)
    await store.ledger.grant("beta", M, 1000)
    start = clock.now()
    for n, startup in enumerate(["acme", "beta", "acme"]):
        hold = await store.ledger.reserve(startup, M, 10, ttl_s=30, idempotency_key=f"r{n}")
        await store.ledger.settle(hold.id, n + 1, ref(n))
        clock.advance(100)
    lines = await store.journal.journal()
    assert [line.amount for line in lines] == [1, 2, 3]
    assert [line.seq for line in lines] == sorted(line.seq for line in lines)
    assert [line.amount for line in await store.journal.journal("acme")] == [1, 3]
    assert [line.at for line in await store.journal.journal("acme")] == [start, start + 200]
    assert [line.amount for line in await store.journal.journal(since=start + 100)] == [2, 3]
    assert [line.amount for line in await store.journal.journal(until=start + 150)] == [1, 2]
    assert [line.amount for line in await store.journal.journal("acme", since=start + 50, until=start + 250)] == [3]
    assert [line.amount for line in await store.journal.journal(limit=2)] == [1, 2]
    assert await store.journal.journal("nobody") == []


async def test_usage_totals_by_model_and_gpu_type(store: Stores) -> None:
    await acme(store)
    await store.ledger.grant("acme", M, 1000)
    await store.ledger.grant("acme", C, 100_000)
    for n, (model, amount) in enumerate([("m1", 10), ("m2", 20), ("m1", 5), (None, 7)]):
        hold = await store.ledger.reserve("acme", M, 50, ttl_s=30, idempotency_key=f"m{n}")
        ref = ChargeRef(f"r{n}", model=model, prompt_tokens=n, completion_tokens=2 * n)
        await store.ledger.settle(hold.id, amount, ref)
    job = await store.ledger.reserve("acme", C, 10_000, ttl_s=30, idempotency_key="job")
    await store.ledger.settle(job.id, 3_000, ChargeRef("job-1", gpu_type="A100"))
    totals = {
        (t.startup_id, t.kind, t.label): (t.amount, t.prompt_tokens, t.completion_tokens)
        for t in await store.journal.usage_totals()
    }
    assert totals == {
        ("acme", M, "m1"): (15, 2, 4),
        ("acme", M, "m2"): (20, 1, 2),
        ("acme", M, ""): (7, 3, 6),
        ("acme", C, "A100"): (3_000, 0, 0),
    }


# answers kept for idempotent retries


async def test_an_answer_is_kept_per_startup_and_key_until_its_time_is_up(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await acme(store, "beta")
    assert await store.answers.kept_answer("acme", "k1") is None
    await store.answers.keep_answer("acme", "k1", b'{"answer": "\xc3\xa9t\xc3\xa9"}', ttl_s=60)
    assert await store.answers.kept_answer("acme", "k1") == b'{"answer": "\xc3\xa9t\xc3\xa9"}'
    assert await store.answers.kept_answer("beta", "k1") is None  # keys are per startup
    assert await store.answers.kept_answer("acme", "k2") is None
    clock.advance(61)
    assert await store.answers.kept_answer("acme", "k1") is None
    with pytest.raises(InvalidRequest):
        await store.answers.keep_answer("acme", "k3", b"\xff not text", ttl_s=60)
    with pytest.raises(InvalidRequest):
        await store.answers.keep_answer("acme", "k3", b"{}", ttl_s=0)
    assert await store.answers.kept_answer("acme", "k3") is None


# prices and limits


async def test_prices(store: Stores) -> None:
    assert await store.catalog.get_price("m1") is None
    await store.catalog.set_price(Price("m1", 500_000, 1_500_000))
    await store.catalog.set_price(Price("m0", 1, 2))
    await store.catalog.set_price(Price("m1", 600_000, 1_600_000))
    assert await store.catalog.get_price("m1") == Price("m1", 600_000, 1_600_000)
    assert sorted(await store.catalog.list_prices(), key=lambda p: p.model) == [
        Price("m0", 1, 2),
        Price("m1", 600_000, 1_600_000),
    ]


async def test_limits_default_to_none(store: Stores) -> None:
    await acme(store)
    assert await store.catalog.get_limits("acme") == Limits()
    await store.catalog.set_limits("acme", Limits(rpm=600, tpm=None))
    assert await store.catalog.get_limits("acme") == Limits(rpm=600, tpm=None)


async def test_rate_limit_requests_per_minute(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    limits = Limits(rpm=2)
    clock.set(1_800_000_000.0 + 15)  # 15 s into a minute window
    first = await store.rates.rate_limit("acme", limits, requests=1, tokens=0)
    assert first.allowed and first.remaining_requests == 1 and first.limit_requests == 2
    assert first.reset_s == pytest.approx(45)
    second = await store.rates.rate_limit("acme", limits, requests=1, tokens=0)
    assert second.allowed and second.remaining_requests == 0
    clock.advance(5)
    refused = await store.rates.rate_limit("acme", limits, requests=1, tokens=0)
    assert not refused.allowed and refused.remaining_requests == 0
    assert refused.retry_after_s == pytest.approx(40) and refused.reset_s == pytest.approx(40)
    clock.advance(40)  # the next window
    fresh = await store.rates.rate_limit("acme", limits, requests=1, tokens=0)
    assert fresh.allowed and fresh.remaining_requests == 1 and fresh.reset_s == pytest.approx(60)


async def test_rate_limit_tokens_counted_only_when_allowed(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    limits = Limits(tpm=1000)
    assert (await store.rates.rate_limit("acme", limits, requests=1, tokens=600)).remaining_tokens == 400
    refused = await store.rates.rate_limit("acme", limits, requests=1, tokens=500)
    assert not refused.allowed and refused.remaining_tokens == 400 and refused.retry_after_s > 0
    allowed = await store.rates.rate_limit("acme", limits, requests=1, tokens=400)
    assert allowed.allowed and allowed.remaining_tokens == 0
    unlimited = await store.rates.rate_limit("acme", Limits(), requests=1, tokens=10**9)
    assert unlimited.allowed and unlimited.remaining_tokens is None


async def test_rate_limit_is_per_startup(store: Stores) -> None:
    await acme(store)
    await acme(store, "beta")
    limits = Limits(rpm=1)
    assert (await store.rates.rate_limit("acme", limits, requests=1, tokens=0)).allowed
    assert (await store.rates.rate_limit("beta", limits, requests=1, tokens=0)).allowed
    assert not (await store.rates.rate_limit("acme", limits, requests=1, tokens=0)).allowed


# worker registry


def worker(worker_id: str, model: str = "smollm2-135m") -> WorkerRecord:
    return WorkerRecord(id=worker_id, model=model, url=f"http://127.0.0.1:9000/{worker_id}", engine="llamacpp")


async def test_worker_registry_ttl(store: Stores, clock: ManualClock) -> None:
    await store.registry.register_worker(worker("w1"), ttl_s=10)
    await store.registry.register_worker(worker("w2", model="other"), ttl_s=10)
    listed = await store.registry.list_workers("smollm2-135m")
    assert [w.id for w in listed] == ["w1"] and listed[0].heartbeat_at == clock.now()
    assert sorted(w.id for w in await store.registry.list_workers()) == ["w1", "w2"]
    clock.advance(9)
    assert await store.registry.heartbeat_worker("w1", ttl_s=10)
    clock.advance(5)  # w2 is 14 s past its last heartbeat, w1 only 5
    assert [w.id for w in await store.registry.list_workers()] == ["w1"]
    assert not await store.registry.heartbeat_worker("w2", ttl_s=10)
    assert not await store.registry.heartbeat_worker("never", ttl_s=10)
    await store.registry.deregister_worker("w1")
    assert await store.registry.list_workers() == []
    await store.registry.register_worker(worker("w2", model="other"), ttl_s=10)
    assert [w.id for w in await store.registry.list_workers("other")] == ["w2"]


async def test_kept_answers_stay_within_the_startups_budget(store: Stores, clock: ManualClock) -> None:
    await acme(store)
    await acme(store, "beta")
    ten = b"0123456789"
    assert await store.answers.keep_answer("acme", "a", ten, ttl_s=60, budget_bytes=25)
    assert await store.answers.keep_answer("acme", "b", ten, ttl_s=30, budget_bytes=25)
    assert not await store.answers.keep_answer("acme", "c", ten, ttl_s=60, budget_bytes=25)  # 30 bytes > 25
    assert await store.answers.kept_answer("acme", "c") is None
    assert await store.answers.keep_answer("beta", "c", ten, ttl_s=60, budget_bytes=25)  # a budget per startup
    assert await store.answers.keep_answer("acme", "a", ten + b"12", ttl_s=60, budget_bytes=25)  # replaces: 22 bytes
    assert await store.answers.kept_answer("acme", "a") == ten + b"12"
    assert not await store.answers.keep_answer("acme", "c", b"1234", ttl_s=60, budget_bytes=25)
    assert await store.answers.keep_answer("acme", "c", b"1234", ttl_s=60)  # no budget: kept (26 bytes now)
    clock.advance(30)  # b's time is up: its bytes no longer count (16 left)
    assert await store.answers.kept_answer("acme", "b") is None
    assert await store.answers.keep_answer("acme", "d", b"123456789", ttl_s=60, budget_bytes=25)  # 25 bytes
    assert not await store.answers.keep_answer("acme", "e", b"1", ttl_s=60, budget_bytes=25)
    assert [await store.answers.kept_answer("acme", k) for k in "acd"] == [ten + b"12", b"1234", b"123456789"]

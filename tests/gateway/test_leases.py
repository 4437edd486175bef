"""Admission leases (gateway.leases) on the Redis store, where ledger events reach every replica.

Each test asserts what a founder or an admin would notice: what is charged and to which voucher, what a
balance shows, which requests get through, and that revocations and voids apply at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from decimal import Decimal

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageParam

from gateway.app import create_app
from tests.conftest import redis_url
from tests.gateway.conftest import MODEL, Running, at_once, eventually, register
from tests.gateway.fake_upstream import FakeUpstream, UvicornThread
from vouchers.clock import ManualClock
from vouchers.factory import Stores
from vouchers.keys import hash_secret
from vouchers.models import ApiKey
from vouchers.settings import GatewaySettings
from vouchers.units import Kind

pytestmark = pytest.mark.parametrize("backend", ["redis"])

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three"}]
CREDIT = 1_000_000  # ledger units per credit


def _consistent(b: dict[str, str]) -> None:
    assert Decimal(b["granted"]) == Decimal(b["spent"]) + Decimal(b["held"]) + Decimal(b["remaining"])


async def _per_token(gateway: Running, upstream: FakeUpstream, store: Stores, credits: str | None) -> str:
    """One credit per completion token, prompts free: a request's worst case is its max_tokens."""
    await register(store, upstream, capacity=256)
    await gateway.set_price(MODEL, "0", "1000000")
    return await gateway.onboard("acme", credits)


async def test_one_lease_admits_many_requests_and_the_journal_keeps_a_line_for_each(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings
) -> None:
    key = await _per_token(gateway, upstream, store, "1000")
    client = gateway.client(key)
    ids = []
    for _ in range(10):
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        ids.append(raw.headers["x-request-id"])
        assert raw.parse().usage is not None
    # Read the store itself: the replica still holds its lease, idle, until lease_idle_s passes.
    direct = (await store.ledger.balance("acme")).model
    assert direct.spent == 10 * 5 * CREDIT  # the fake model writes 5 tokens
    assert direct.held == settings.lease_requests * 8 * CREDIT - direct.spent  # one hold, not one per request
    lines = await store.journal.journal("acme")
    assert sorted(line.ref.reference for line in lines) == sorted(ids)
    assert all(line.amount == 5 * CREDIT and line.ref.model == MODEL for line in lines)
    # A balance read through the replica releases its idle lease: held is what running requests hold.
    b = await gateway.balance("acme")
    assert b["spent"] == "50" and b["held"] == "0" and b["remaining"] == "950"
    _consistent(b)


async def test_an_idle_lease_goes_back_by_itself(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    key = await _per_token(gateway, upstream, store, "1000")
    await gateway.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert (await store.ledger.balance("acme")).model.held > 0

    async def released() -> bool:
        return (await store.ledger.balance("acme")).model.held == 0

    await eventually(released)
    assert (await store.ledger.balance("acme")).model.spent == 5 * CREDIT


async def test_k_requests_of_credit_let_exactly_k_through_out_of_200_when_k_is_larger_than_a_lease(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings
) -> None:
    k = 3 * settings.lease_requests + 5  # leases open, grow, then shrink to what one request needs
    key = await _per_token(gateway, upstream, store, str(k))
    results = await at_once(gateway, key, 200, MESSAGES)
    assert results.count("ok") + results.count("insufficient_quota") == 200
    assert results.count("ok") == k  # every credit bought a request, and no request went unpaid
    b = await gateway.balance("acme")
    assert b["held"] == "0" and b["spent"] == str(k) and b["remaining"] == "0"
    _consistent(b)


async def test_a_key_revoked_through_the_store_stops_at_once_on_a_replica_that_trusts_it(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    key = await _per_token(gateway, upstream, store, "1000")
    client = gateway.client(key)
    for _ in range(3):  # the replica now knows the key and admits it on its lease, with no ledger call
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    key_id = (await store.directory.list_keys("acme"))[0].id
    # another process's store: the event reaches the replica before this returns
    await store.directory.revoke_key(key_id)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert info.value.code == "invalid_api_key"
    assert (await gateway.balance("acme"))["spent"] == "15"


async def test_a_voided_voucher_burns_no_further_though_a_lease_was_drawn_on_it(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings, clock: ManualClock
) -> None:
    key = await _per_token(gateway, upstream, store, None)
    first = await store.ledger.grant("acme", Kind.MODEL, 500 * CREDIT, priority=0)  # burns first
    second = await store.ledger.grant("acme", Kind.MODEL, 500 * CREDIT, priority=10)
    other = UvicornThread(create_app(settings, clock=clock), lifespan="on", as_gateway=True)
    other.start()
    try:
        clients = [gateway.client(key), gateway.client(key, base_url=other.url + "/v1")]
        for client in clients * 2:  # both replicas hold a lease on the first voucher
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        r = await gateway.admin.post(f"/admin/v1/vouchers/{first.id}/void")
        assert r.status_code == 200
        spent_on_first = (await store.ledger.get_voucher(first.id)).spent  # type: ignore[union-attr]
        assert spent_on_first == 20 * CREDIT
        for client in clients * 3:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    finally:
        other.stop()
    assert (await store.ledger.get_voucher(first.id)).spent == spent_on_first  # type: ignore[union-attr]
    assert (await store.ledger.get_voucher(second.id)).spent == 30 * CREDIT  # type: ignore[union-attr]
    b = await gateway.balance("acme")
    assert b["granted"] == "500" and b["spent"] == "30" and b["held"] == "0"
    _consistent(b)


async def test_voiding_the_only_voucher_refuses_the_next_request_at_once(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    key = await _per_token(gateway, upstream, store, "1000")
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    voucher = (await store.ledger.list_vouchers("acme", Kind.MODEL))[0]
    await store.ledger.void_voucher(voucher.id)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"


async def test_a_lease_admits_nothing_once_a_voucher_it_draws_on_has_expired(
    gateway: Running, upstream: FakeUpstream, store: Stores, clock: ManualClock
) -> None:
    key = await _per_token(gateway, upstream, store, None)
    soon = await store.ledger.grant("acme", Kind.MODEL, 500 * CREDIT, expires_at=clock.now() + 100)
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert (await store.ledger.balance("acme")).model.held > 0  # a lease on the voucher
    clock.advance(101)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert info.value.code == "insufficient_quota"
    later = await store.ledger.grant("acme", Kind.MODEL, 500 * CREDIT)
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert (await store.ledger.get_voucher(soon.id)).spent == 5 * CREDIT  # type: ignore[union-attr]
    assert (await store.ledger.get_voucher(later.id)).spent == 15 * CREDIT  # type: ignore[union-attr]


async def test_when_events_stop_the_replica_forgets_and_comes_back(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings, clock: ManualClock
) -> None:
    key = await _per_token(gateway, upstream, store, "1000")
    # A replica whose idle leases stay: only hearing that events stopped can make it give its lease back.
    patient = UvicornThread(create_app(settings.model_copy(update={"lease_idle_s": 3600.0}), clock=clock),
                            lifespan="on", as_gateway=True)
    patient.start()
    try:
        client = gateway.client(key, base_url=patient.url + "/v1")
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert (await store.ledger.balance("acme")).model.held > 0  # a lease
        r = aioredis.from_url(redis_url())
        try:
            assert await r.client_kill_filter(_type="pubsub") >= 1  # every subscription on the server drops
        finally:
            await r.aclose()

        async def lease_gone() -> bool:
            return (await store.ledger.balance("acme")).model.held == 0

        await eventually(lease_gone)
        for _ in range(3):  # requests go on: on their own holds until the subscription is back, then on a lease
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

        async def leasing_again() -> bool:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
            return (await store.ledger.balance("acme")).model.held > 0

        await eventually(leasing_again)
    finally:
        patient.stop()
    b = await gateway.balance("acme")  # the stopped replica gave its lease back
    assert b["held"] == "0" and Decimal(b["spent"]) >= 25
    _consistent(b)


async def test_a_replica_that_never_confirms_an_event_does_not_hang_a_revocation(
    store: Stores, caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    await store.directory.create_startup("acme", "Acme")
    key = await store.directory.add_key(ApiKey("key_1", "acme", "test", hash_secret("sk-shuqi-x"), "sk-shuqi-x", 0.0))
    mute = aioredis.from_url(redis_url())
    pubsub = mute.pubsub()
    await pubsub.subscribe(f"{namespace}:events")  # hears the event, never confirms it
    try:
        with caplog.at_level(logging.ERROR):
            revoked = await asyncio.wait_for(store.directory.revoke_key(key.id), 10)
        assert revoked.revoked_at is not None
        assert "did not confirm" in caplog.text
    finally:
        await pubsub.aclose()
        await mute.aclose()


@pytest.mark.parametrize("seed", [1, 2])
async def test_mixed_requests_at_once_never_overspend_and_charge_what_was_answered(
    gateway: Running, upstream: FakeUpstream, store: Stores, seed: int
) -> None:
    # Worst cases of 1 to 12 credits, streamed or not, 150 at once on 600 credits: leases open, grow, run
    # short and hand over to per-request holds; whatever the interleaving, nothing is spent unanswered.
    rng = random.Random(seed)
    upstream.state.reply_tokens = 6
    key = await _per_token(gateway, upstream, store, "600")
    limits = httpx.Limits(max_connections=150, max_keepalive_connections=150)
    client = gateway.client(key, http_client=httpx.AsyncClient(limits=limits, timeout=120))
    plan = [(rng.randint(1, 12), rng.random() < 0.3) for _ in range(150)]

    async def one(max_tokens: int, stream: bool) -> int:
        """Completion tokens the client received, 0 when refused."""
        try:
            if not stream:
                answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                              max_tokens=max_tokens)
                return answer.usage.completion_tokens if answer.usage else -1
            chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens,
                                                          stream=True)
            received = 0
            async for chunk in chunks:
                received += 1 if chunk.choices and chunk.choices[0].delta.content else 0
            return received
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return 0

    received = await asyncio.gather(*(one(m, s) for m, s in plan))
    assert all(r >= 0 for r in received)
    assert sum(1 for r in received if r > 0) > 50  # most of them ran: the credits cover about 100
    b = await gateway.balance("acme")
    assert b["held"] == "0" and Decimal(b["spent"]) == sum(received)
    assert Decimal(b["spent"]) <= 600
    _consistent(b)
    lines = await store.journal.journal("acme")
    assert len(lines) == sum(1 for r in received if r > 0) and all(line.overage == 0 for line in lines)

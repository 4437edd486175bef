"""What only the Redis store can get wrong: scripts, replicas sharing one server, key layout, precision.

The shared ledger suite (test_ledger_*.py) checks the rules on every backend; these tests cover the
Redis-specific parts. Tests that flush scripts, kill connections or list every key run against a
private redis-server started for the test, never against the shared one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import _drop_namespace, redis_url, stop
from vouchers.clock import ManualClock
from vouchers.errors import InsufficientQuota
from vouchers.events import EventKind, LedgerEvent
from vouchers.factory import Stores, open_stores
from vouchers.models import ApiKey, ChargeRef, Limits, Price, WorkerRecord
from vouchers.units import MAX_AMOUNT, Kind

pytestmark = pytest.mark.redis

M = Kind.MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for tests that disturb the whole server."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("redis-server exited at start")
                time.sleep(0.05)  # waiting for a process to listen, not for a clock
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc, timeout_s=10)


async def _open(url: str, clock: ManualClock, *, namespace: str) -> Stores:
    return await open_stores(url, data_dir=Path("/nonexistent"), clock=clock, namespace=namespace)


@pytest.fixture
async def pair(clock: ManualClock) -> AsyncIterator[tuple[Stores, Stores]]:
    """Two stores on the shared server and one namespace: two gateway replicas."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    a = await _open(redis_url(), clock, namespace=namespace)
    b = await _open(redis_url(), clock, namespace=namespace)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
        await _drop_namespace(namespace)


async def test_replicas_see_one_balance_and_cannot_overspend_together(pair: tuple[Stores, Stores]) -> None:
    a, b = pair
    await a.directory.create_startup("acme", "Acme")
    await b.ledger.grant("acme", M, 100)

    async def try_reserve(store: Stores, n: int) -> bool:
        try:
            await store.ledger.reserve("acme", M, 3, ttl_s=60, idempotency_key=f"r{n}")
        except InsufficientQuota:
            return False
        return True

    results = await asyncio.gather(*(try_reserve(a if n % 2 else b, n) for n in range(80)))
    assert sum(results) == 33  # 33 * 3 = 99 of 100; every other attempt must be refused
    seen_a, seen_b = await a.ledger.balance("acme"), await b.ledger.balance("acme")
    assert seen_a.model == seen_b.model
    assert (seen_a.model.held, seen_a.model.remaining) == (99, 1)


async def test_a_hold_taken_on_one_replica_settles_on_another(pair: tuple[Stores, Stores]) -> None:
    a, b = pair
    await a.directory.create_startup("acme", "Acme")
    await a.ledger.grant("acme", M, 1000)
    hold = await a.ledger.reserve("acme", M, 400, ttl_s=60, idempotency_key="x")
    line = await b.ledger.settle(hold.id, 250, ChargeRef("req-1", model="m1"))
    assert (line.amount, line.overage) == (250, 0)
    again = await a.ledger.settle(hold.id, 250, ChargeRef("req-1", model="m1"))
    assert again.seq == line.seq
    balance = await a.ledger.balance("acme")
    assert (balance.model.spent, balance.model.held, balance.model.remaining) == (250, 0, 750)


async def test_amounts_near_the_maximum_stay_exact(pair: tuple[Stores, Stores]) -> None:
    # Lua numbers are doubles; a careless tostring would also turn these into "9.007199254741e+15".
    a, _ = pair
    await a.directory.create_startup("acme", "Acme")
    await a.ledger.grant("acme", M, MAX_AMOUNT)
    hold = await a.ledger.reserve("acme", M, MAX_AMOUNT - 1, ttl_s=60, idempotency_key="big")
    line = await a.ledger.settle(hold.id, MAX_AMOUNT - 3, ChargeRef("req", model="m1"))
    assert line.amount == MAX_AMOUNT - 3
    balance = await a.ledger.balance("acme")
    assert (balance.model.spent, balance.model.held, balance.model.remaining) == (MAX_AMOUNT - 3, 0, 3)
    [total] = await a.journal.usage_totals()
    assert total.amount == MAX_AMOUNT - 3


async def test_times_read_back_exactly(pair: tuple[Stores, Stores], clock: ManualClock) -> None:
    a, _ = pair
    clock.set(1_800_000_000.123456789)
    await a.directory.create_startup("acme", "Acme")
    voucher = await a.ledger.grant("acme", M, 10, expires_at=1_800_000_600.987654321)
    stored = await a.ledger.get_voucher(voucher.id)
    assert stored is not None
    assert (stored.effective_at, stored.expires_at) == (clock.now(), 1_800_000_600.987654321)
    hold = await a.ledger.reserve("acme", M, 5, ttl_s=0.1, idempotency_key="t")
    assert hold.expires_at == clock.now() + 0.1


async def test_scripts_are_loaded_again_after_script_flush(private_redis: str, clock: ManualClock) -> None:
    store = await _open(private_redis, clock, namespace="flush")
    admin = aioredis.from_url(private_redis)
    try:
        await store.directory.create_startup("acme", "Acme")
        await store.ledger.grant("acme", M, 100)
        await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="before")
        await admin.script_flush()
        hold = await store.ledger.reserve("acme", M, 20, ttl_s=60, idempotency_key="after")
        await store.ledger.settle(hold.id, 15, ChargeRef("r"))
        balance = await store.ledger.balance("acme")
        assert (balance.model.spent, balance.model.held) == (15, 10)
    finally:
        await admin.aclose()
        await store.close()


async def test_a_killed_connection_is_opened_again(private_redis: str, clock: ManualClock) -> None:
    store = await _open(private_redis, clock, namespace="kill")
    admin = aioredis.from_url(private_redis)
    try:
        await store.directory.create_startup("acme", "Acme")
        await store.ledger.grant("acme", M, 100)
        await store.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="before")
        await admin.client_kill_filter(_type="normal", skipme=True)
        hold = await store.ledger.reserve("acme", M, 20, ttl_s=60, idempotency_key="after")
        assert hold.amount == 20
        assert (await store.ledger.balance("acme")).model.held == 30
    finally:
        await admin.aclose()
        await store.close()


async def test_every_key_is_inside_the_namespace(private_redis: str, clock: ManualClock) -> None:
    store = await _open(private_redis, clock, namespace="ns1")
    try:
        await store.directory.create_startup("acme", "Acme")
        await store.directory.add_key(ApiKey("key_1", "acme", "ci", "a" * 64, "sk-shuqi-ab", clock.now()))
        await store.directory.revoke_key("key_1")
        voucher = await store.ledger.grant("acme", M, 1000, expires_at=clock.now() + 3600)
        await store.ledger.grant("acme", Kind.COMPUTE, 1000)
        h1 = await store.ledger.reserve("acme", M, 100, ttl_s=30, idempotency_key="h1")
        await store.ledger.extend(h1.id, ttl_s=60, add_amount=10)
        await store.ledger.settle(h1.id, 50, ChargeRef("r1", model="m1"), final=False, idempotency_key="p1")
        await store.ledger.settle(h1.id, 70, ChargeRef("r1", model="m1"))
        h2 = await store.ledger.reserve("acme", Kind.COMPUTE, 100, ttl_s=30, idempotency_key="h2")
        await store.ledger.release(h2.id)
        await store.ledger.reserve("acme", M, 100, ttl_s=1, idempotency_key="h3")
        clock.advance(2)
        assert await store.ledger.reap_holds() == 1
        await store.ledger.void_voucher(voucher.id)
        await store.catalog.set_price(Price("m1", 1, 2))
        await store.catalog.set_limits("acme", Limits(rpm=10, tpm=100))
        await store.rates.rate_limit("acme", Limits(rpm=10, tpm=100), requests=1, tokens=5)
        await store.registry.register_worker(WorkerRecord("w1", "m1", "http://127.0.0.1:9", "llamacpp"), ttl_s=10)
        await store.registry.heartbeat_worker("w1", ttl_s=10)
        await store.journal.journal()
        await store.journal.usage_totals()
        await store.ledger.balance("acme")
        await store.registry.deregister_worker("w1")
    finally:
        await store.close()
    admin = aioredis.from_url(private_redis, decode_responses=True)
    try:
        keys = [key async for key in admin.scan_iter(count=1000)]
    finally:
        await admin.aclose()
    assert keys, "the workload wrote nothing"
    assert [k for k in keys if not k.startswith("ns1:")] == []
    # One startup's ledger keys carry its hash tag, so they share a cluster slot.
    assert {k for k in keys if ":voucher:" in k or ":hold:" in k} <= {k for k in keys if "{acme}" in k}


async def test_a_repeated_key_of_another_kind_returns_the_first_hold_and_its_kind(
    pair: tuple[Stores, Stores],
) -> None:
    # The store remembers which startup and kind own a hold; the repeat must not teach it the wrong kind.
    a, _ = pair
    await a.directory.create_startup("acme", "Acme")
    await a.ledger.grant("acme", M, 100)
    await a.ledger.grant("acme", Kind.COMPUTE, 5)
    first = await a.ledger.reserve("acme", M, 10, ttl_s=60, idempotency_key="same")
    again = await a.ledger.reserve("acme", Kind.COMPUTE, 3, ttl_s=60, idempotency_key="same")
    assert (again.id, again.kind) == (first.id, M)
    extended = await a.ledger.extend(again.id, ttl_s=60, add_amount=20)
    assert extended.amount == 30
    balance = await a.ledger.balance("acme")
    assert (balance.model.held, balance.compute.held) == (30, 0)


async def test_opening_on_a_server_without_aof_warns(
    private_redis: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The private server runs with appendonly no, as a careless production server would.
    with caplog.at_level(logging.WARNING, logger="vouchers.factory"):
        store = await _open(private_redis, clock, namespace="aof")
        await store.close()
    assert any("without AOF" in r.getMessage() for r in caplog.records)
    admin = aioredis.from_url(private_redis)
    try:
        await admin.config_set("appendonly", "yes")
    finally:
        await admin.aclose()
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="vouchers.factory"):
            store = await _open(private_redis, clock, namespace="aof")
            await store.close()
    finally:
        admin = aioredis.from_url(private_redis)
        try:
            await admin.config_set("appendonly", "no")  # a server with AOF takes long to stop
        finally:
            await admin.aclose()
    assert not [r for r in caplog.records if "without AOF" in r.getMessage()]


async def test_a_revocation_and_a_void_are_heard_by_every_watching_replica_before_they_return(
    pair: tuple[Stores, Stores],
) -> None:
    a, b = pair
    heard_a: list[LedgerEvent | None] = []
    heard_b: list[LedgerEvent | None] = []
    await a.events.watch(heard_a.append)
    await b.events.watch(heard_b.append)
    assert a.events.watching and b.events.watching
    assert heard_a == [None] and heard_b == [None]  # set up: forget what may have been missed before
    await a.directory.create_startup("acme", "Acme")
    key = await a.directory.add_key(ApiKey("key_1", "acme", "ci", "hash-1", "sk-shuqi-x", 0.0))
    voucher = await a.ledger.grant("acme", M, 100)
    await b.directory.revoke_key(key.id)  # no wait after it: both must have heard already
    assert heard_a[-1] == heard_b[-1] == LedgerEvent(EventKind.KEY_REVOKED, key.id)
    await a.ledger.void_voucher(voucher.id)
    assert heard_a[-1] == heard_b[-1] == LedgerEvent(EventKind.VOUCHER_VOIDED, "acme")


async def test_a_dropped_subscription_is_heard_as_none_and_comes_back(private_redis: str, clock: ManualClock) -> None:
    store = await _open(private_redis, clock, namespace="events")
    admin = aioredis.from_url(private_redis)
    heard: list[LedgerEvent | None] = []
    try:
        await store.events.watch(heard.append)
        assert store.events.watching and heard == [None]
        await admin.client_kill_filter(_type="pubsub")
        for _ in range(200):  # the subscriber notices the closed socket on its next read
            if len(heard) >= 3:
                break
            await asyncio.sleep(0.02)
        assert heard == [None, None, None]  # lost, then subscribed again
        assert store.events.watching
        await store.directory.create_startup("acme", "Acme")
        key = await store.directory.add_key(ApiKey("key_1", "acme", "ci", "hash-1", "sk-shuqi-x", 0.0))
        await store.directory.revoke_key(key.id)
        assert heard[-1] == LedgerEvent(EventKind.KEY_REVOKED, key.id)
    finally:
        await admin.aclose()
        await store.close()


async def test_a_quiet_subscription_stays_up(
    pair: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No events for many ping intervals: the pongs alone must keep it up (a drop would make every replica
    # forget its keys and leases each time).
    monkeypatch.setattr("vouchers.redis_events.PING_EVERY_S", 0.05)
    a, _ = pair
    heard: list[LedgerEvent | None] = []
    await a.events.watch(heard.append)
    await asyncio.sleep(0.6)  # twelve pings; no pong for three intervals would count as a lost connection
    assert a.events.watching and heard == [None]

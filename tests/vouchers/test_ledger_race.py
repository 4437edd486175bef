"""Many OS processes, each with many concurrent requests, against one ledger on every backend.

The vouchers fit exactly K reserves: exactly K must succeed however the requests interleave, and a
settle retried concurrently with the same key must charge once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _drop_namespace, store_url
from vouchers.clock import SystemClock
from vouchers.errors import InsufficientQuota
from vouchers.factory import Stores, open_stores
from vouchers.models import ChargeRef
from vouchers.units import Kind

pytestmark = pytest.mark.slow

PROCESSES = 4
PER_PROCESS = 110
AMOUNT = 7
K = 137  # reserves that fit, of PROCESSES * PER_PROCESS attempts
STARTUP = "race"


async def _open(url: str, data_dir: Path, namespace: str) -> Stores:
    # The system clock: every process must agree on what time it is.
    return await open_stores(url, data_dir=data_dir, clock=SystemClock(), namespace=namespace)


def _run_in_child(job: str, url: str, data_dir: str, namespace: str, arg: str, barrier: Barrier, out: Any) -> None:
    with asyncio.Runner() as runner:
        store = runner.run(_open(url, Path(data_dir), namespace))
        try:
            barrier.wait(timeout=120)  # all processes start their burst together
            if job == "reserve":
                out.put(runner.run(_reserve_burst(store, arg)))
            else:
                out.put(runner.run(_settle_burst(store, arg)))
        finally:
            runner.run(store.close())


async def _reserve_burst(store: Stores, tag: str) -> dict[str, int]:
    async def one(n: int) -> str:
        try:
            await store.ledger.reserve(STARTUP, Kind.MODEL, AMOUNT, ttl_s=600, idempotency_key=f"{tag}-{n}")
        except InsufficientQuota:
            return "refused"
        return "held"

    outcomes = await asyncio.gather(*(one(n) for n in range(PER_PROCESS)), return_exceptions=True)
    return dict(Counter(o if isinstance(o, str) else type(o).__name__ for o in outcomes))


async def _settle_burst(store: Stores, hold_id: str) -> list[int]:
    lines = await asyncio.gather(
        *(
            store.ledger.settle(hold_id, 60, ChargeRef("req-once", model="m1"), idempotency_key="settle-once")
            for _ in range(50)
        )
    )
    return sorted({line.seq for line in lines})


def _run_processes(job: str, url: str, data_dir: Path, namespace: str, args: list[str]) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_run_in_child, args=(job, url, str(data_dir), namespace, arg, barrier, out)) for arg in args
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    out.close()
    out.join_thread()
    return results


@pytest.fixture
async def race_url(backend: str, tmp_path: Path) -> Any:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield store_url(backend, tmp_path), namespace
    if backend == "redis":
        await _drop_namespace(namespace)


async def test_exactly_k_reserves_fit(race_url: tuple[str, str], tmp_path: Path) -> None:
    url, namespace = race_url
    store = await _open(url, tmp_path, namespace)
    try:
        await store.directory.create_startup(STARTUP, "Race")
        # Three vouchers, so reserves also race across voucher boundaries.
        for part in (300, 400, K * AMOUNT - 700):
            await store.ledger.grant(STARTUP, Kind.MODEL, part)
        tags = [f"p{i}" for i in range(PROCESSES)]
        results = await asyncio.to_thread(_run_processes, "reserve", url, tmp_path, namespace, tags)
        totals: Counter[str] = Counter()
        for result in results:
            totals.update(result)
        assert totals == Counter({"held": K, "refused": PROCESSES * PER_PROCESS - K})
        balance = (await store.ledger.balance(STARTUP)).model
        assert (balance.held, balance.remaining, balance.spent) == (K * AMOUNT, 0, 0)
    finally:
        await store.close()


async def test_concurrent_settle_retries_charge_once(race_url: tuple[str, str], tmp_path: Path) -> None:
    url, namespace = race_url
    store = await _open(url, tmp_path, namespace)
    try:
        await store.directory.create_startup(STARTUP, "Race")
        await store.ledger.grant(STARTUP, Kind.MODEL, 1000)
        hold = await store.ledger.reserve(STARTUP, Kind.MODEL, 100, ttl_s=600, idempotency_key="req-once")
        results = await asyncio.to_thread(_run_processes, "settle", url, tmp_path, namespace, [hold.id] * PROCESSES)
        assert len({seq for seqs in results for seq in seqs}) == 1
        lines = await store.journal.journal(STARTUP)
        assert [line.amount for line in lines] == [60]
        balance = (await store.ledger.balance(STARTUP)).model
        assert (balance.spent, balance.held, balance.remaining) == (60, 0, 940)
    finally:
        await store.close()

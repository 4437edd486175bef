"""Fixtures shared by every test package: clocks and a store on each real backend."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vouchers.clock import ManualClock
from vouchers.factory import Stores, open_stores

BACKENDS = ["sqlite", "redis"]


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """End a server a test started: SIGTERM, then SIGKILL if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: run the suite through `make test` (it starts a Redis)")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def store_url(backend: str, tmp_path: Path) -> str:
    return redis_url() if backend == "redis" else f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(backend: str, tmp_path: Path, clock: ManualClock, namespace: str) -> AsyncIterator[Stores]:
    """A fresh, empty store on the backend under test, driven by a manual clock."""
    s = await open_stores(store_url(backend, tmp_path), data_dir=tmp_path, clock=clock, namespace=namespace)
    try:
        yield s
    finally:
        await s.close()
        if backend == "redis":
            await _drop_namespace(namespace)


async def _drop_namespace(namespace: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url())
    try:
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()

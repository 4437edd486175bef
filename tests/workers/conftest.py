"""Fixtures for worker tests: one local Ray cluster with logical GPUs for the session, a system-clock store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_config
from vouchers.factory import Stores, open_stores
from vouchers.keys import hash_secret, new_id, new_secret
from vouchers.models import ApiKey
from vouchers.settings import GatewaySettings
from vouchers.units import Kind
from workers.engine import ModelSpec
from workers.process import free_port
from workers.service import WorkerSettings


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray head with 4 logical GPUs and 2 CPUs (ray.init picks a free GCS port, never 6379)."""
    import ray

    ray.init(
        num_gpus=4,
        num_cpus=2,
        include_dashboard=False,
        namespace="shuqi-tests",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
async def system_store(ledger_url: str, tmp_path: Path) -> AsyncIterator[Stores]:
    """A SQLite store on the wall clock: workers heartbeat from other processes with real time."""
    store = await open_stores(ledger_url, data_dir=tmp_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def worker_settings(ledger_url: str, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        store_url=ledger_url,
        data_dir=tmp_path,
        heartbeat_ttl_s=5.0,
        check_interval_s=0.25,
        health_timeout_s=60.0,
        max_restarts=2,
    )


def smollm2(name: str = "smollm2-135m", **changes: object) -> ModelSpec:
    """The bundled SmolLM2 on llama.cpp, small context, priced so charges are visible."""
    fields: dict[str, object] = {
        "name": name,
        "engine": "llamacpp",
        "model": "bundled:smollm2",
        "max_model_len": 1024,
        "input_per_1m": "3",
        "output_per_1m": "7",
    }
    fields.update(changes)
    return ModelSpec(**fields)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> float:
    """Poll an async or sync predicate until true; seconds it took, or fail the test at the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        await asyncio.sleep(interval_s)
    pytest.fail(f"condition not met within {timeout_s}s")


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, ledger_url: str, **settings: Any) -> AsyncIterator[str]:
    """The real gateway on a free loopback port, on the workers' ledger; yields its base URL."""
    config = GatewaySettings(**{"data_dir": tmp_path, "store": ledger_url, "admin_token": "test-admin",
                                "worker_refresh_s": 0.2, "health_interval_s": 0.5, **settings})
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout_s=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def startup_with_key(store: Stores, credits: int) -> tuple[str, str]:
    """A new startup with a model voucher of `credits` (micro-credits); (its id, its key's secret)."""
    startup = new_id("acme")
    await store.directory.create_startup(startup, "Acme AI")
    secret = new_secret()
    await store.directory.add_key(ApiKey(new_id("key"), startup, "ci", hash_secret(secret), secret[:12], 0.0))
    await store.ledger.grant(startup, Kind.MODEL, credits)
    return startup, secret

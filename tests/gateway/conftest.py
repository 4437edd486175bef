"""Gateway fixtures: the fake upstream and the gateway, each a real HTTP server on its own thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.app import create_app
from tests.conftest import store_url
from tests.gateway.fake_upstream import FakeUpstream, UvicornThread
from vouchers.clock import ManualClock
from vouchers.factory import Stores
from vouchers.models import WorkerRecord
from vouchers.settings import GatewaySettings

ADMIN_TOKEN = "admin-test-token"
MODEL = "fake-model"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(MODEL)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(backend: str, tmp_path: Path, namespace: str) -> GatewaySettings:
    return GatewaySettings(store=store_url(backend, tmp_path), data_dir=tmp_path, admin_token=ADMIN_TOKEN,
                           namespace=namespace, worker_refresh_s=0.2, health_interval_s=0.2, price_cache_s=0,
                           reap_interval_s=3600)


@dataclass
class Running:
    url: str
    admin: httpx.AsyncClient
    server: UvicornThread
    clients: list[openai.AsyncOpenAI]

    def client(self, key: str, **kwargs: object) -> openai.AsyncOpenAI:
        """The official SDK pointed at this gateway, no retries unless asked; closed with the gateway."""
        options: dict[str, object] = {"max_retries": 0, "base_url": self.url + "/v1", **kwargs}
        client = openai.AsyncOpenAI(api_key=key, **options)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    async def onboard(self, startup_id: str, credits: str | None = "10") -> str:
        """A startup with a key (returned) and, unless None, a model voucher of `credits`."""
        r = await self.admin.post("/admin/v1/startups", json={"id": startup_id, "name": startup_id.title()})
        assert r.status_code == 201, r.text
        r = await self.admin.post(f"/admin/v1/startups/{startup_id}/keys", json={"name": "test"})
        assert r.status_code == 201, r.text
        if credits is not None:
            g = await self.admin.post(f"/admin/v1/startups/{startup_id}/vouchers",
                                      json={"kind": "model", "amount": credits})
            assert g.status_code == 201, g.text
        return str(r.json()["key"])

    async def set_price(self, model: str, input_per_1m: str, output_per_1m: str) -> None:
        r = await self.admin.put(f"/admin/v1/prices/{model}",
                                 json={"input_per_1m": input_per_1m, "output_per_1m": output_per_1m})
        assert r.status_code == 200, r.text

    async def balance(self, startup_id: str) -> dict[str, str]:
        r = await self.admin.get(f"/admin/v1/startups/{startup_id}/balance")
        assert r.status_code == 200, r.text
        model: dict[str, str] = r.json()["model"]
        return model


@pytest.fixture
async def gateway(settings: GatewaySettings, clock: ManualClock, store: Stores) -> AsyncIterator[Running]:
    """The gateway on a real port, sharing the backend (and clock) of the test's `store`."""
    server = UvicornThread(create_app(settings, clock=clock), lifespan="on", as_gateway=True)
    server.start()
    admin = httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    running = Running(server.url, admin, server, [])
    try:
        yield running
    finally:
        for client in running.clients:
            await client.close()
        await admin.aclose()
        server.stop()


async def at_once(gateway: Running, key: str, n: int, messages: list[ChatCompletionMessageParam]) -> list[str]:
    """Send `n` chat requests of max_tokens=1 all at once, each on its own connection: each result is "ok"
    or the code of the 429 that refused it."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    client = gateway.client(key, http_client=httpx.AsyncClient(limits=limits, timeout=120))

    async def one() -> str:
        try:
            await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
        except openai.RateLimitError as exc:
            return str(exc.code)
        return "ok"

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def register(store: Stores, upstream: FakeUpstream, *, worker_id: str = "w1", owner: str | None = None,
                   model: str = MODEL, capacity: int = 8, tokenizer: bool = True) -> WorkerRecord:
    """Put a fake replica in the registry the gateway routes from."""
    record = WorkerRecord(id=worker_id, model=model, url=upstream.url, engine="fake", owner=owner, capacity=capacity,
                          context_length=2048, tokenize_path="/tokenize" if tokenizer else None, embeddings=True)
    await store.registry.register_worker(record, ttl_s=3600)
    return record


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Wait for something another server does in its own time (not a timed assertion: it fails only if never)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.02)

"""The per-app state the lifespan builds and every handler reads: no module-level clients anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.requests import Request

from gateway.auth import KeyBook
from gateway.lookups import Lookups
from gateway.metrics import ServiceMetrics
from gateway.pool import Pool
from gateway.registry import WorkerTable
from gateway.settings import GatewaySettings
from vouchers.clock import Clock
from vouchers.store import Store


@dataclass
class Gateway:
    settings: GatewaySettings
    store: Store
    clock: Clock
    client: aiohttp.ClientSession  # health checks and token counts
    pool: Pool  # the proxied requests
    workers: WorkerTable
    lookups: Lookups
    metrics: ServiceMetrics
    admin_token: str
    keys: KeyBook = field(default_factory=KeyBook)
    settling: set[asyncio.Task[None]] = field(default_factory=set)

    def defer(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ledger work after the answer is sent; `settled` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def settled(self) -> None:
        """Wait until the deferred settles started before this call have reached the store.

        Reads of balances, journals and metrics call this first, so a client that got its answer and then
        asks what it was charged sees the charge. Settles that start later are not waited for: under
        steady traffic there is always another one, and a read must not wait for the traffic to stop.
        """
        pending = list(self.settling)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until no deferred settle is left (at shutdown, once no request can start one)."""
        while self.settling:
            await asyncio.gather(*list(self.settling), return_exceptions=True)


def gateway_of(request: Request) -> Gateway:
    """The gateway state of the app serving this request."""
    gw: Gateway = request.app.state.gateway
    return gw

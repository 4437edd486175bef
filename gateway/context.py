"""The per-app state the lifespan builds and every handler reads: no module-level clients anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from gateway.auth import KeyBook
from gateway.leases import Leases
from gateway.lookups import Lookups
from gateway.metrics import ServiceMetrics
from gateway.pool import Pool
from gateway.registry import WorkerTable
from vouchers.clock import Clock
from vouchers.events import LedgerEvent
from vouchers.factory import Stores
from vouchers.jobs import JobStore, SchedulerState
from vouchers.settings import GatewaySettings


@dataclass
class Gateway:
    settings: GatewaySettings
    stores: Stores
    clock: Clock
    client: aiohttp.ClientSession  # health checks and token counts
    pool: Pool  # the proxied requests
    workers: WorkerTable
    lookups: Lookups
    metrics: ServiceMetrics
    admin_token: str
    gpu_weights: dict[str, int] = field(default_factory=dict)  # milli-weights per GPU type
    # Registries of parts served in this process (the scheduler under `shuqi up`), appended to /metrics.
    extra_metrics: list[CollectorRegistry] = field(default_factory=list)
    leases: Leases = field(init=False)
    keys: KeyBook = field(init=False)
    listening: bool = False  # this gateway's listener hears the store's ledger events (vouchers.events)
    settling: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.keys = KeyBook(trusted=self.events_flow)
        s = self.settings
        self.leases = Leases(self.stores.ledger, self.clock, requests=s.lease_requests, idle_s=s.lease_idle_s,
                             ttl_s=s.hold_ttl_s, events_flow=self.events_flow)

    @property
    def jobs(self) -> JobStore:
        return self.stores.jobs

    @property
    def scheduling(self) -> SchedulerState:
        """What the scheduler publishes: the cluster's capacity, queue estimates; and its wake-up signal."""
        return self.stores.scheduling

    def events_flow(self) -> bool:
        """True while every revocation and void reaches this replica before the admin call returns."""
        return self.listening and self.stores.events.watching

    def on_event(self, event: LedgerEvent | None) -> None:
        self.keys.on_event(event)
        self.leases.on_event(event)

    def defer(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ledger work after the answer is sent; `settled` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def settled(self, startup_id: str | None = None) -> None:
        """Wait until the deferred settles started before this call have reached the store.

        Reads of balances, journals and metrics call this first, so a client that got its answer and then
        asks what it was charged sees the charge; then this replica's idle leases (of `startup_id`, or
        all) are released, so what is held is what running requests hold. Settles that start later are not
        waited for: under steady traffic there is always another one, and a read must not wait for the
        traffic to stop.
        """
        pending = list(self.settling)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.leases.quiesce(startup_id)

    async def drain(self) -> None:
        """Wait until no deferred settle is left (at shutdown, once no request can start one)."""
        while self.settling:
            await asyncio.gather(*list(self.settling), return_exceptions=True)


def gateway_of(request: Request) -> Gateway:
    """The gateway state of the app serving this request."""
    gw: Gateway = request.app.state.gateway
    return gw

"""The per-app state the lifespan builds and every handler reads: no module-level clients anywhere."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from starlette.requests import Request

from gateway.lookups import Lookups
from gateway.metrics import ServiceMetrics
from gateway.registry import WorkerTable
from gateway.settings import GatewaySettings
from vouchers.clock import Clock
from vouchers.store import Store


@dataclass
class Gateway:
    settings: GatewaySettings
    store: Store
    clock: Clock
    client: aiohttp.ClientSession
    workers: WorkerTable
    lookups: Lookups
    metrics: ServiceMetrics
    admin_token: str


def gateway_of(request: Request) -> Gateway:
    """The gateway state of the app serving this request."""
    gw: Gateway = request.app.state.gateway
    return gw

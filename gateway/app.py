"""The gateway app factory: the lifespan owns the upstream pool and the background loops, and the stores
when none were passed in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import orjson
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import admin, deployments_api, errors, jobs_api, metrics, openai_api
from gateway.context import Gateway, gateway_of
from gateway.job_metrics import job_families
from gateway.lookups import Lookups
from gateway.pool import Pool
from gateway.registry import WorkerTable
from gateway.upstream import open_session
from vouchers.clock import Clock, SystemClock
from vouchers.errors import ShuqiError
from vouchers.factory import Stores, open_stores
from vouchers.job_rules import parse_weights
from vouchers.jobs import JobStatus
from vouchers.settings import GatewaySettings

log = logging.getLogger(__name__)


async def _every(seconds: float, name: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` every `seconds` until cancelled; a failing step is logged and retried next time."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background step %s failed", name)
        await asyncio.sleep(seconds)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background loops and wait until they end.

    A step may swallow its cancellation (seen with redis-py 8 while a command was in flight), leaving the
    loop asleep until its next round; cancelling again each second ends it instead of hanging shutdown.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


@asynccontextmanager
async def _running(app: FastAPI, settings: GatewaySettings, stores: Stores | None, clock: Clock) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        if stores is None:
            stores = await open_stores(settings.store, data_dir=settings.data_dir, clock=clock,
                                       namespace=settings.namespace)
            stack.push_async_callback(stores.close)
        client = open_session(max_connections=settings.max_connections,
                              connect_timeout_s=settings.upstream_connect_timeout_s,
                              read_timeout_s=settings.upstream_read_timeout_s)
        stack.push_async_callback(client.close)
        pool = Pool(max_connections=settings.max_connections, connect_timeout_s=settings.upstream_connect_timeout_s,
                    read_timeout_s=settings.upstream_read_timeout_s)
        stack.push_async_callback(pool.close)
        workers = WorkerTable(stores.registry, client, health_timeout_s=settings.health_timeout_s)
        gw = Gateway(settings=settings, stores=stores, clock=clock, client=client, pool=pool, workers=workers,
                     lookups=Lookups(stores.catalog, ttl_s=settings.price_cache_s), metrics=metrics.ServiceMetrics(),
                     admin_token=settings.resolve_admin_token(),
                     gpu_weights=parse_weights(settings.gpu_weights))
        app.state.gateway = gw
        await stores.events.watch(gw.on_event)
        gw.listening = True
        stack.push_async_callback(stores.events.unwatch, gw.on_event)
        await workers.refresh()
        await workers.check_health()
        tasks = [
            asyncio.create_task(_every(settings.worker_refresh_s, "refresh workers", workers.refresh)),
            asyncio.create_task(_every(settings.health_interval_s, "health checks", workers.check_health)),
            asyncio.create_task(_every(settings.reap_interval_s, "reap holds", stores.ledger.reap_holds)),
            # Retired leases (a void, lost events) go back within this too, however long idle ones may stay.
            asyncio.create_task(_every(min(settings.lease_idle_s / 4, 0.25), "tend leases", gw.leases.tend)),
        ]
        try:
            yield
        finally:
            await _stop(tasks)
            await gw.drain()  # charges of answers already sent reach the store before it closes
            await gw.leases.close()


async def healthz(request: Request) -> Response:
    """200 once the store answers and at least one worker is healthy; the body says what is missing."""
    gw = gateway_of(request)
    missing: list[str] = []
    try:
        await gw.stores.catalog.list_prices()
        store_ok = True
    except Exception:
        log.exception("store health check failed")
        store_ok = False
        missing.append("store")
    healthy = [w for w in gw.workers.workers if gw.workers.is_healthy(w.id)]
    if not healthy:
        missing.append("a healthy worker")
    if gw.settings.require_scheduler and store_ok and await gw.scheduling.capacity() is None:
        missing.append("the scheduler")
    body = {"status": "ok" if not missing else "unavailable", "store": store_ok,
            "workers": {"known": len(gw.workers.workers), "healthy": len(healthy)},
            "models": sorted({w.model for w in healthy}), "missing": missing}
    return Response(orjson.dumps(body), status_code=200 if not missing else 503, media_type="application/json")


async def metrics_page(request: Request) -> Response:
    """GET /metrics in the Prometheus text format."""
    gw = gateway_of(request)
    await gw.settled()
    s = gw.stores
    text = await metrics.render(s.directory, s.ledger, s.journal, gw.metrics, gw.workers.counts(), gw.clock.now())
    active = await gw.jobs.list_jobs(statuses=(JobStatus.QUEUED, JobStatus.RUNNING), limit=10**9)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Snapshot(job_families(active, await gw.scheduling.capacity(), gw.clock.now())))
    text += bytes(generate_latest(registry))
    for extra in gw.extra_metrics:
        text += bytes(generate_latest(extra))
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


class _GatewayApp(FastAPI):
    """FastAPI, except that the metered POST endpoints skip its middleware, routing and telemetry layers.

    Those layers cost about as much CPU per request as the gateway's own work; the handlers need none of
    them, and errors still render through the same functions as every other route's.
    """

    hot_paths: dict[str, Callable[[Request], Awaitable[Response]]]  # set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.hot_paths.get(scope["path"])
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive)
        response = await self.answer(handler, request)
        await response(scope, receive, send)

    async def answer(self, handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
        """A hot path's response, its errors rendered as every other route's (`gateway.server` calls this
        directly, without the ASGI layers in between)."""
        try:
            return await handler(request)
        except ShuqiError as exc:
            return errors.error_response(exc)
        except Exception:
            return errors.unexpected_error(request)


def create_app(settings: GatewaySettings, stores: Stores | None = None, clock: Clock | None = None, *,
               extra_metrics: list[CollectorRegistry] | None = None) -> FastAPI:
    """Build the gateway over `stores` (the caller's to close), or over stores it opens from `settings.store`
    and closes itself (`shuqi gateway`). `clock` must be the one the stores were opened with."""
    the_clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(app, settings, stores, the_clock):
            app.state.gateway.extra_metrics.extend(extra_metrics or [])
            yield

    app = _GatewayApp(title="shuqi gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.hot_paths = openai_api.metered_handlers()
    errors.install(app)
    app.router.routes.extend(openai_api.routes())
    app.router.routes.extend(jobs_api.routes())
    app.include_router(admin.router())
    app.include_router(deployments_api.router())
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/metrics", metrics_page, methods=["GET"])
    return app

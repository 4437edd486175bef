"""A gateway and a scheduler over one store and a real Ray cluster, for the tests that run real jobs."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from scheduler.config import SchedulerConfig
from scheduler.deployments import WorkerLaunch
from scheduler.ray_cluster import RayCluster
from scheduler.ray_jobs import RayJobs
from scheduler.service import Scheduler
from tests.gateway.fake_upstream import UvicornThread
from vouchers.clock import SystemClock
from vouchers.factory import Stores, open_stores
from vouchers.job_rules import parse_weights
from vouchers.settings import GatewaySettings

ADMIN_TOKEN = "admin-test-token"
WEIGHTS = "a=1,b=2"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "REJECTED")


@dataclass
class Stack:
    url: str
    store_url: str
    namespace: str
    admin: httpx.AsyncClient
    stores: Stores
    ray: RayJobs
    schedulers: dict[str, tuple[Scheduler, asyncio.Task[None]]] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)

    def founder(self, key: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        self.clients.append(client)
        return client

    async def onboard(self, startup_id: str, gpu_hours: str | None = "1") -> httpx.AsyncClient:
        """A startup with a key and, unless None, a compute voucher; its HTTP client."""
        r = await self.admin.post("/admin/v1/startups", json={"id": startup_id, "name": startup_id.title()})
        assert r.status_code == 201, r.text
        r = await self.admin.post(f"/admin/v1/startups/{startup_id}/keys", json={"name": "test"})
        assert r.status_code == 201, r.text
        if gpu_hours is not None:
            g = await self.admin.post(f"/admin/v1/startups/{startup_id}/vouchers",
                                      json={"kind": "compute", "amount": gpu_hours})
            assert g.status_code == 201, g.text
        return self.founder(str(r.json()["key"]))

    async def compute(self, client: httpx.AsyncClient) -> dict[str, Decimal]:
        r = await client.get("/v1/balance")
        assert r.status_code == 200, r.text
        return {k: Decimal(r.json()["compute"][k]) for k in ("granted", "spent", "held", "remaining")}

    async def wait(self, client: httpx.AsyncClient, job_id: str, statuses: tuple[str, ...] = TERMINAL,
                   timeout_s: float = 90.0) -> dict[str, Any]:
        """The job once it reaches one of `statuses` (fails only if it never does)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            r = await client.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job: dict[str, Any] = r.json()
            if job["status"] in statuses:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} stayed {job['status']}: {job}")
            await asyncio.sleep(0.2)

    def start_scheduler(self, instance: str, config: SchedulerConfig | None = None) -> Scheduler:
        config = config or scheduler_config()
        s = self.stores
        scheduler = Scheduler(jobs=s.jobs, state=s.scheduling, ledger=s.ledger, catalog=s.catalog,
                              cluster=RayCluster(self.ray), config=config, clock=SystemClock(), instance=instance,
                              deployments=s.deployments,
                              launch=WorkerLaunch(python=sys.executable, env=self.worker_env, hold_window_s=60))
        self.schedulers[instance] = (scheduler, asyncio.create_task(scheduler.run()))
        return scheduler

    async def stop_scheduler(self, instance: str) -> None:
        _, task = self.schedulers.pop(instance)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def scheduler_config(**changes: Any) -> SchedulerConfig:
    fields: dict[str, Any] = {"gpu_weights": parse_weights(WEIGHTS), "max_runtime_s": 3600, "tick_s": 0.25,
                              "lease_ttl_s": 2.0, "cover_check_s": 0.5, **changes}
    return SchedulerConfig(**fields)


@contextlib.asynccontextmanager
async def running_stack(store_url: str, data_dir: Path, namespace: str, dashboard_url: str,
                        token: str | None) -> AsyncIterator[Stack]:
    """The gateway (its own thread), one scheduler (this loop), the stores; Ray jobs left running are stopped."""
    settings = GatewaySettings(store=store_url, data_dir=data_dir, admin_token=ADMIN_TOKEN, namespace=namespace,
                               gpu_weights=WEIGHTS, max_job_runtime_s=3600, reap_interval_s=3600)
    server = UvicornThread(create_app(settings), lifespan="on", as_gateway=True)
    server.start()
    clock = SystemClock()
    stores = await open_stores(store_url, data_dir=data_dir, clock=clock, namespace=namespace)
    admin = httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    stack = Stack(server.url, store_url, namespace, admin, stores, RayJobs(dashboard_url, token),
                  worker_env={"SHUQI_STORE": settings.store_url(), "SHUQI_DATA_DIR": str(data_dir),
                              "SHUQI_NAMESPACE": namespace})
    stack.start_scheduler("s1")
    try:
        yield stack
    finally:
        for instance in list(stack.schedulers):
            await stack.stop_scheduler(instance)
        for job in await stack.stores.jobs.list_jobs(limit=1000):
            with contextlib.suppress(Exception):
                await stack.ray.stop(job.id)
        for d in await stack.stores.deployments.list_deployments():
            for i in range(d.replicas):
                with contextlib.suppress(Exception):
                    await stack.ray.stop(f"{d.id}-r{i}")
        for client in stack.clients:
            await client.aclose()
        await admin.aclose()
        await stack.ray.aclose()
        server.stop()
        await stores.close()

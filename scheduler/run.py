"""`shuqi scheduler`: one scheduler instance. Two on one Redis store are a leader and a standby.

It reads the ledger's store (`SHUQI_STORE`) and talks to one Ray cluster through its dashboard
(`SHUQI_RAY_DASHBOARD`, with Ray's token), and serves its own metrics on `SHUQI_SCHEDULER_METRICS_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping

from prometheus_client import start_http_server

from scheduler.config import config_of
from scheduler.deployments import WorkerLaunch
from scheduler.metrics import SchedulerMetrics
from scheduler.ray_cluster import RayCluster
from scheduler.ray_jobs import RayJobs
from scheduler.service import Scheduler
from vouchers.clock import Clock, SystemClock
from vouchers.factory import Stores, open_stores
from vouchers.settings import SchedulerSettings

log = logging.getLogger(__name__)


def instance_name() -> str:
    """A name for this scheduler process, unique across restarts (the leader lease names it)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def build(settings: SchedulerSettings, stores: Stores, *, token: str | None, clock: Clock,
          worker_env: Mapping[str, str]) -> Scheduler:
    """A scheduler over these stores and the settings' Ray cluster (not yet running)."""
    instance = instance_name()
    ray = RayJobs(settings.ray_dashboard, token, timeout_s=settings.ray_timeout_s)
    return Scheduler(jobs=stores.jobs, state=stores.scheduling, ledger=stores.ledger, catalog=stores.catalog,
                     cluster=RayCluster(ray),
                     config=config_of(settings), clock=clock, instance=instance, metrics=SchedulerMetrics(instance),
                     deployments=stores.deployments, launch=WorkerLaunch(python=sys.executable, env=worker_env))


def worker_env(settings: SchedulerSettings) -> dict[str, str]:
    """What a deployment replica's worker needs to find the store: operator workloads, never tenants' jobs."""
    return {"SHUQI_STORE": settings.store_url(), "SHUQI_DATA_DIR": str(settings.data_dir.resolve()),
            "SHUQI_NAMESPACE": settings.namespace}


async def run(settings: SchedulerSettings, token: str | None) -> int:
    """Serve until SIGINT/SIGTERM."""
    clock = SystemClock()
    stores = await open_stores(settings.store, data_dir=settings.data_dir, clock=clock, namespace=settings.namespace)
    scheduler = build(settings, stores, token=token, clock=clock, worker_env=worker_env(settings))
    if settings.scheduler_metrics_port:
        start_http_server(settings.scheduler_metrics_port, addr="127.0.0.1", registry=scheduler.metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(scheduler.run())
    log.info("scheduler %s started on %s", scheduler.instance, settings.ray_dashboard)
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stores.close()
    return 0

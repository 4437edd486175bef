"""`shuqi worker --model NAME`: one worker service, for deployments over several machines.

With RAY_ADDRESS set it joins that Ray cluster and runs the worker as an actor Ray places (GPUs from
the spec); without it, it runs the same WorkerService in this process, with no Ray at all, which is
how a plain VM or a container serves one model. Either way it stops on SIGINT/SIGTERM, deregistering
first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass

from vouchers.settings import WorkerNodeSettings
from workers.engine import ModelSpec
from workers.engines import get_engine
from workers.service import WorkerService, WorkerSettings, WorkerStatus
from workers.specs import load_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerCommand:
    """`shuqi worker`: one model, the node's settings (`vouchers.settings`), and the Ray cluster to join if any."""

    model: str
    node: WorkerNodeSettings
    ray_address: str | None = None  # RAY_ADDRESS: Ray's own variable, read by its entry point as Ray does

    def settings(self) -> WorkerSettings:
        """The WorkerSettings this command runs with."""
        node = self.node
        data_dir = node.data_dir.resolve()
        store = f"sqlite:///{data_dir / 'ledger.db'}" if node.store == "sqlite" else node.store
        advertise = node.worker_advertise
        if advertise is None and node.worker_host == "0.0.0.0":
            advertise = socket.gethostbyname(socket.gethostname())
        return WorkerSettings(store_url=store, data_dir=data_dir, namespace=node.namespace, bind_host=node.worker_host,
                              advertise_host=advertise)


async def run_worker(command: WorkerCommand) -> int:
    """Serve one model until SIGINT/SIGTERM; the exit code."""
    spec = load_config(command.node.models).get(command.model)
    settings = command.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if command.ray_address:
        return await _run_on_ray(command.ray_address, spec, settings, stop)
    service = WorkerService(spec, get_engine(spec.engine), settings)
    try:
        status = await service.start()
    except RuntimeError as exc:
        logger.error("worker failed to start: %s", exc)
        return 1
    _announce(status)
    await stop.wait()
    await service.stop()
    return 0


async def _run_on_ray(address: str, spec: ModelSpec, settings: WorkerSettings, stop: asyncio.Event) -> int:
    import ray

    from workers.actor import init_ray, launch

    await asyncio.to_thread(init_ray, address=address, log_to_driver=False)
    try:
        handle = launch(spec, settings)
        status = await handle.start.remote()
        _announce(status)
        await stop.wait()
        await handle.stop.remote()
        return 0
    finally:
        await asyncio.to_thread(ray.shutdown)


def _announce(status: WorkerStatus) -> None:
    print(f"worker {status.worker_id} serves {status.model} at {status.url}", flush=True)


def worker_main(model: str) -> int:
    """Entry point of `shuqi worker`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    command = WorkerCommand(model, WorkerNodeSettings(), ray_address=os.environ.get("RAY_ADDRESS") or None)
    return asyncio.run(run_worker(command))

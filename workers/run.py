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
from pathlib import Path

from workers.engine import ModelSpec
from workers.engines import get_engine
from workers.service import WorkerService, WorkerSettings, WorkerStatus
from workers.specs import load_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerCommand:
    """`shuqi worker` settings, from the same SHUQI_* environment as the other services."""

    model: str
    store: str = "sqlite"
    data_dir: Path = Path(".shuqi")
    ray_address: str | None = None
    host: str = "127.0.0.1"  # where the engine listens; 0.0.0.0 on a node the gateway reaches over the network
    advertise_host: str | None = None
    models_path: Path | None = None

    @classmethod
    def from_env(cls, model: str, env: dict[str, str] | None = None) -> WorkerCommand:
        """Build from SHUQI_STORE, SHUQI_DATA_DIR, RAY_ADDRESS, SHUQI_WORKER_HOST, SHUQI_WORKER_ADVERTISE."""
        env = dict(os.environ if env is None else env)
        models = env.get("SHUQI_MODELS")
        return cls(
            model=model,
            store=env.get("SHUQI_STORE", "sqlite"),
            data_dir=Path(env.get("SHUQI_DATA_DIR", ".shuqi")),
            ray_address=env.get("RAY_ADDRESS") or None,
            host=env.get("SHUQI_WORKER_HOST", "127.0.0.1"),
            advertise_host=env.get("SHUQI_WORKER_ADVERTISE") or None,
            models_path=Path(models) if models else None,
        )

    def settings(self) -> WorkerSettings:
        """The WorkerSettings this command runs with."""
        data_dir = self.data_dir.resolve()
        store = f"sqlite:///{data_dir / 'ledger.db'}" if self.store == "sqlite" else self.store
        advertise = self.advertise_host
        if advertise is None and self.host == "0.0.0.0":
            advertise = socket.gethostbyname(socket.gethostname())
        return WorkerSettings(store_url=store, data_dir=data_dir, bind_host=self.host, advertise_host=advertise)


async def run_worker(command: WorkerCommand) -> int:
    """Serve one model until SIGINT/SIGTERM; the exit code."""
    spec = load_config(command.models_path).get(command.model)
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
    return asyncio.run(run_worker(WorkerCommand.from_env(model)))

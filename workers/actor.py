"""The worker as a Ray actor: Ray places it (GPUs from the spec, CPUs set explicitly), it runs a WorkerService."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

from workers.engine import ModelSpec
from workers.engines import get_engine
from workers.service import WorkerService, WorkerSettings, WorkerStatus

# What a worker shows of the placement Ray gave it.
_PLACEMENT_VARS = ("CUDA_VISIBLE_DEVICES",)


class WorkerActor:
    """Wrapped by `ray.remote` in `launch`; an async actor, so its watch loop runs between calls."""

    def __init__(self, spec: ModelSpec, settings: WorkerSettings, worker_id: str | None = None) -> None:
        self._service = WorkerService(spec, get_engine(spec.engine), settings, worker_id=worker_id)

    async def start(self) -> WorkerStatus:
        """Start the engine and register; returns once healthy (raises if it never becomes healthy)."""
        return self._with_placement(await self._service.start())

    async def stop(self) -> WorkerStatus:
        """Deregister and stop the engine."""
        return self._with_placement(await self._service.stop())

    async def status(self) -> WorkerStatus:
        """State, URL, engine pid, restarts."""
        return self._with_placement(self._service.status())

    def _with_placement(self, status: WorkerStatus) -> WorkerStatus:
        env = {name: os.environ[name] for name in _PLACEMENT_VARS if name in os.environ}
        return dataclasses.replace(status, env=env)


def launch(
    spec: ModelSpec,
    settings: WorkerSettings,
    *,
    num_cpus: float = 0.0,
    worker_id: str | None = None,
    name: str | None = None,
) -> Any:
    """Create the actor on the connected Ray cluster; the caller awaits `handle.start.remote()`.

    num_cpus defaults to 0: the actor itself only waits on I/O, and an actor that holds a CPU for life
    starves a small machine (the engine's own threads are outside Ray's accounting either way).
    """
    import ray

    remote_cls = ray.remote(WorkerActor)
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": spec.gpus, "max_restarts": 0}
    if name is not None:
        options["name"] = name
    return remote_cls.options(**options).remote(spec, settings, worker_id)


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def init_ray(*, token: str | None = None, **kwargs: Any) -> Any:
    """ray.init for services that own their signals and call it off the main thread; its context.

    Off the main thread ray.init sets no SIGTERM handler of its own (on it, it would replace ours with
    sys.exit) and warns about it; the warning is noise here. With `token`, this process joins a
    token-auth cluster: Ray reads the mode and token from the environment once, when it is first
    imported (an explicit address never turns token auth on by itself), so they are set first.
    """
    if token is not None:
        ready = os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN") == token
        if "ray._raylet" in sys.modules and not ready:
            # Measured on Ray 2.60: set after the import, the token is ignored and ray.init fails with a
            # bare ConnectionError; say why instead.
            raise RuntimeError("init_ray(token=...) must run before this process first imports ray")
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = token
    import ray

    logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())
    return ray.init(**kwargs)

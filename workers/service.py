"""The worker: runs one engine server, registers it while healthy, restarts it when it dies.

Life of a worker: start the engine on a free port, wait until its health path answers, register in the
store with a heartbeat TTL, then every interval check the process and its health and heartbeat. When the
engine dies or stops answering, the worker deregisters at once (the TTL only covers a worker that dies
itself), restarts the engine up to `max_restarts` times in a row, and reports FAILED after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

from vouchers.factory import Stores, open_stores
from vouchers.keys import new_id
from vouchers.models import WorkerRecord
from vouchers.registry import Registry
from workers.engine import Engine, ModelSpec
from workers.process import EngineProcess, free_port

logger = logging.getLogger(__name__)


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker reaches the store and how closely it watches its engine."""

    store_url: str
    data_dir: Path
    namespace: str = "shuqi"
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None  # the host the gateway dials; bind_host unless told
    heartbeat_ttl_s: float = 10.0
    check_interval_s: float = 1.0
    health_timeout_s: float = 180.0  # vLLM needs about a minute on this CPU; llama.cpp about 2 s
    unhealthy_after: int = 3  # failed health checks in a row before the engine is restarted
    max_restarts: int = 3  # restarts in a row without reaching READY before the worker reports FAILED
    drain_s: float = 0.0  # time between deregistering and stopping the engine, for requests in flight
    node: str | None = None


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker reports about itself."""

    worker_id: str
    model: str
    state: WorkerState
    url: str | None
    pid: int | None
    restarts: int
    last_exit: int | None
    detail: str = ""
    env: dict[str, str] = field(default_factory=dict)


class WorkerService:
    """One engine server plus its registration; `start` returns once it is registered and healthy."""

    def __init__(self, spec: ModelSpec, engine: Engine, settings: WorkerSettings, *, worker_id: str | None = None):
        self.spec = spec
        self._engine = engine
        self._settings = settings
        self.worker_id = worker_id or new_id("wkr")
        self._stores: Stores | None = None  # opened here; the worker uses only its registry
        self._registry: Registry | None = None
        self._http: httpx.AsyncClient | None = None
        self._proc: EngineProcess | None = None
        self._url: str | None = None
        self._state = WorkerState.STOPPED
        self._restarts = 0
        self._total_restarts = 0
        self._last_exit: int | None = None
        self._detail = ""
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> WorkerStatus:
        """Open the store, start the engine, wait until healthy, register, and watch it from now on."""
        s = self._settings
        self._stores = await open_stores(s.store_url, data_dir=s.data_dir, namespace=s.namespace)
        self._registry = self._stores.registry
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._state = WorkerState.STARTING
        try:
            await self._launch_until_ready()
        except BaseException:
            await self._close()
            raise
        self._watch = asyncio.create_task(self._supervise(), name=f"watch-{self.worker_id}")
        return self.status()

    async def stop(self) -> WorkerStatus:
        """Deregister, let requests in flight finish for `drain_s`, stop the engine, close the store."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._deregister()
        if self._settings.drain_s > 0 and self._proc is not None:
            await asyncio.sleep(self._settings.drain_s)
        await self._stop_engine()
        self._state = WorkerState.STOPPED
        await self._close()
        return self.status()

    def status(self) -> WorkerStatus:
        """The worker's state now."""
        return WorkerStatus(
            worker_id=self.worker_id,
            model=self.spec.name,
            state=self._state,
            url=self._url,
            pid=self._proc.pid if self._proc is not None and self._proc.returncode is None else None,
            restarts=self._total_restarts,
            last_exit=self._last_exit,
            detail=self._detail,
        )

    async def _launch_until_ready(self) -> None:
        """Start the engine and wait for health, retrying up to max_restarts; RuntimeError when out of tries."""
        while True:
            try:
                await self._launch()
                await self._wait_healthy()
            except (RuntimeError, TimeoutError, OSError) as exc:
                self._detail = str(exc)
                await self._stop_engine()
                if self._restarts >= self._settings.max_restarts:
                    self._state = WorkerState.FAILED
                    raise RuntimeError(f"engine for {self.spec.name} did not become healthy: {exc}") from exc
                self._restarts += 1
                self._total_restarts += 1
                logger.warning("engine start failed, retrying: %s", exc, extra={"worker_id": self.worker_id})
                continue
            await self._register()
            self._state = WorkerState.READY
            self._restarts = 0
            self._detail = ""
            return

    async def _launch(self) -> None:
        s = self._settings
        port = free_port(s.bind_host)
        argv = self._engine.command(self.spec, host=s.bind_host, port=port, data_dir=s.data_dir)
        env = self._engine.environment(self.spec, data_dir=s.data_dir)
        log_path = s.data_dir / "logs" / f"{self.spec.name}-{self.worker_id}.log"
        self._proc = await EngineProcess.start(argv, env=env, log_path=log_path)
        self._url = f"http://{s.advertise_host or s.bind_host}:{port}"

    def _running(self) -> EngineProcess:
        if self._proc is None:
            raise RuntimeError("the engine was never started")
        return self._proc

    async def _wait_healthy(self) -> None:
        proc = self._running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.health_timeout_s
        while loop.time() < deadline:
            if proc.returncode is not None:
                self._last_exit = proc.returncode
                raise RuntimeError(f"engine exited with {proc.returncode}: {proc.log_tail(500)}")
            if await self._healthy():
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"engine not healthy after {self._settings.health_timeout_s:.0f}s")

    async def _healthy(self) -> bool:
        if self._http is None or self._url is None:
            return False
        try:
            response = await self._http.get(self._url + self._engine.health_path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _supervise(self) -> None:
        """Heartbeat while healthy; on death or repeated health failures, deregister and restart."""
        failures = 0
        while True:
            await asyncio.sleep(self._settings.check_interval_s)
            proc = self._running()
            if proc.returncode is None and await self._healthy():
                failures = 0
                await self._heartbeat()
                continue
            failures += 1
            died = proc.returncode is not None
            if not died and failures < self._settings.unhealthy_after:
                continue
            await self._recover(died)
            failures = 0
            if self._state is WorkerState.FAILED:
                return

    async def _recover(self, died: bool) -> None:
        self._last_exit = self._running().returncode
        logger.warning(
            "engine %s; deregistering and restarting",
            f"exited with {self._last_exit}" if died else "stopped answering",
            extra={"worker_id": self.worker_id, "model": self.spec.name},
        )
        await self._deregister()
        await self._stop_engine()
        self._state = WorkerState.RESTARTING
        self._restarts += 1
        self._total_restarts += 1
        try:
            await self._launch_until_ready()
        except RuntimeError as exc:
            logger.error("engine failed for good: %s", exc, extra={"worker_id": self.worker_id})

    async def _register(self) -> None:
        if self._registry is None or self._url is None:
            raise RuntimeError("register before start")
        record = WorkerRecord(
            id=self.worker_id,
            model=self.spec.name,
            url=self._url,
            engine=self._engine.name,
            owner=self.spec.owner,
            capacity=self.spec.capacity,
            node=self._settings.node or socket.gethostname(),
            context_length=self.spec.max_model_len,
            tokenize_path=self._engine.tokenize_path,
            health_path=self._engine.health_path,
        )
        await self._registry.register_worker(record, ttl_s=self._settings.heartbeat_ttl_s)
        logger.info("worker registered", extra={"worker_id": self.worker_id, "model": self.spec.name})

    async def _heartbeat(self) -> None:
        if self._registry is None:
            return
        try:
            if not await self._registry.heartbeat_worker(self.worker_id, ttl_s=self._settings.heartbeat_ttl_s):
                # The record expired (a long pause, or a store restart): register again.
                await self._register()
        except Exception as exc:  # a store blip must not end the watch loop; the TTL covers a long outage
            logger.warning("heartbeat failed: %s", exc, extra={"worker_id": self.worker_id})

    async def _deregister(self) -> None:
        if self._registry is not None:
            await self._registry.deregister_worker(self.worker_id)

    async def _stop_engine(self) -> None:
        if self._proc is not None:
            self._last_exit = await self._proc.stop()

    async def _close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._registry = None
        if self._stores is not None:
            await self._stores.close()
            self._stores = None

"""The gateway's cached view of the worker registry, with health and requests in flight per replica."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from gateway import routing
from gateway.errors import ModelNotFound, ModelUnavailable
from gateway.upstream import STREAM_ERRORS
from vouchers.errors import InvalidRequest
from vouchers.models import WorkerRecord
from vouchers.registry import Registry

log = logging.getLogger(__name__)


class WorkerTable:
    """Workers read from the store about once a second, so the hot path never reads the store to route."""

    def __init__(self, store: Registry, client: aiohttp.ClientSession, *, health_timeout_s: float) -> None:
        self._store = store
        self._client = client
        self._health_timeout_s = health_timeout_s
        self._workers: dict[str, WorkerRecord] = {}
        self._unhealthy: set[str] = set()
        self._in_flight: dict[str, int] = {}
        self.refreshed_at = 0.0  # monotonic time of the last successful read of the registry

    @property
    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def is_healthy(self, worker_id: str) -> bool:
        return worker_id in self._workers and worker_id not in self._unhealthy

    def in_flight(self, worker_id: str) -> int:
        return self._in_flight.get(worker_id, 0)

    async def refresh(self) -> None:
        """Re-read the registry; replicas that left it are forgotten."""
        workers = await self._store.list_workers()
        self._workers = {w.id: w for w in workers}
        self._unhealthy &= set(self._workers)
        self.refreshed_at = time.monotonic()

    async def check_health(self) -> None:
        """Probe every replica's health path at once; a failing replica is skipped until it answers again."""
        workers = self.workers
        results = await asyncio.gather(*(self._probe(w) for w in workers))
        for worker, ok in zip(workers, results, strict=True):
            if ok:
                self._unhealthy.discard(worker.id)
            elif worker.id not in self._unhealthy:
                log.warning("worker unhealthy", extra={"worker": worker.id, "model": worker.model})
                self._unhealthy.add(worker.id)

    async def _probe(self, worker: WorkerRecord) -> bool:
        url = worker.url.rstrip("/") + worker.health_path
        try:
            async with self._client.get(url, timeout=aiohttp.ClientTimeout(total=self._health_timeout_s)) as resp:
                await resp.read()
                return resp.status == 200
        except STREAM_ERRORS:
            return False

    def mark_failed(self, worker_id: str) -> None:
        """A connection to this replica failed: stop sending to it until a health check passes."""
        self._unhealthy.add(worker_id)

    async def replicas_for(self, model: str, startup_id: str, *, embeddings: bool = False) -> list[WorkerRecord]:
        """Replicas the caller may use for `model`; 404 if none is visible, 503 if none is healthy."""
        found = routing.visible(self._workers.values(), model, startup_id)
        if not found:
            # A worker may have registered since the last refresh: look once before saying no.
            await self.refresh()
            found = routing.visible(self._workers.values(), model, startup_id)
        if not found:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        if embeddings:
            found = [w for w in found if w.embeddings]
            if not found:
                raise InvalidRequest(f"The model `{model}` does not serve embeddings.", param="model")
        if not any(self.is_healthy(w.id) for w in found):
            raise ModelUnavailable(f"No healthy worker serves `{model}` right now; try again shortly.")
        return found

    def pick(self, replicas: list[WorkerRecord], exclude: set[str]) -> WorkerRecord | None:
        """The next replica for a request (fewest in flight), or None if every healthy one was tried."""
        healthy = {w.id for w in replicas if w.id not in self._unhealthy}
        return routing.pick(replicas, healthy=healthy, in_flight=self._in_flight, exclude=exclude)

    def acquire(self, worker_id: str) -> None:
        """Count one more request in flight on a replica."""
        self._in_flight[worker_id] = self._in_flight.get(worker_id, 0) + 1

    def release(self, worker_id: str) -> None:
        """Count one request fewer in flight on a replica."""
        left = self._in_flight.get(worker_id, 0) - 1
        if left > 0:
            self._in_flight[worker_id] = left
        else:
            self._in_flight.pop(worker_id, None)

    def counts(self) -> dict[tuple[str, str], int]:
        """Replicas per (model, state) for the shuqi_workers gauge."""
        out: dict[tuple[str, str], int] = {}
        for w in self._workers.values():
            state = "unhealthy" if w.id in self._unhealthy else "healthy"
            out[(w.model, state)] = out.get((w.model, state), 0) + 1
        return out

"""The worker registry: the serving replicas a gateway may route to.

Rules: a worker is listed while its last heartbeat is within its TTL (the store's clock decides);
registering again replaces its record; a heartbeat for a worker that is not listed changes nothing and
says so (the worker registers again); deregistering removes it at once.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import WorkerRecord


class Registry(Protocol):
    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        ...

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        ...

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker at once."""
        ...

    async def list_workers(self, model: str | None = None) -> list[WorkerRecord]:
        """Workers whose heartbeat is within their TTL, optionally for one model."""
        ...

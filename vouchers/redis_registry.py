"""The worker registry on Redis (`vouchers.registry`): a record hash per worker, deadlines in sorted sets."""

from __future__ import annotations

import json
from typing import Any

from vouchers import rules
from vouchers.clock import Clock
from vouchers.models import WorkerRecord
from vouchers.redis_codec import time_text, worker_json
from vouchers.redis_keys import RedisKeys
from vouchers.redis_scripts import ScriptRunner


class RedisRegistry:
    """The `Registry` protocol on Redis."""

    def __init__(self, client: Any, keys: RedisKeys, clock: Clock, scripts: ScriptRunner) -> None:
        # decode_responses=True makes every reply str; redis-py's stubs cannot express that, hence Any.
        self._r = client
        self._keys = keys
        self._clock = clock
        self._scripts = scripts

    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        rules.check_ttl(ttl_s)
        now = self._clock.now()
        key = self._keys.worker(worker.id)
        old_model = await self._r.hget(key, "model")
        async with self._r.pipeline(transaction=True) as pipe:
            if old_model is not None and old_model != worker.model:
                pipe.zrem(self._keys.workers_by_model(old_model), worker.id)
            fields = {"record": worker_json(worker), "model": worker.model, "heartbeat_at": time_text(now)}
            pipe.hset(key, mapping={**fields, "ttl_s": time_text(ttl_s)})
            pipe.zadd(self._keys.workers, {worker.id: now + ttl_s})
            pipe.zadd(self._keys.workers_by_model(worker.model), {worker.id: now + ttl_s})
            await pipe.execute()

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        rules.check_ttl(ttl_s)
        now = self._clock.now()
        refreshed = await self._scripts.run(
            "heartbeat",
            [self._keys.worker(worker_id), self._keys.workers],
            [time_text(now), time_text(ttl_s), time_text(now + ttl_s), worker_id, self._keys.workers_by_model("")],
        )
        return bool(int(refreshed))

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker from the registry."""
        key = self._keys.worker(worker_id)
        model = await self._r.hget(key, "model")
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(self._keys.workers, worker_id)
            if model is not None:
                pipe.zrem(self._keys.workers_by_model(model), worker_id)
            await pipe.execute()

    async def list_workers(self, model: str | None = None) -> list[WorkerRecord]:
        """Workers whose heartbeat is within their TTL, optionally for one model."""
        index = self._keys.workers if model is None else self._keys.workers_by_model(model)
        ids = sorted(await self._r.zrangebyscore(index, f"({time_text(self._clock.now())}", "+inf"))
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hmget(self._keys.worker(worker_id), ["record", "heartbeat_at"])
            rows = await pipe.execute()
        return [
            WorkerRecord(**json.loads(record), heartbeat_at=float(beat))
            for record, beat in rows
            if record is not None
        ]

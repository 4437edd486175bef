"""`vouchers.jobs.JobStore` on Redis: job records shared by every gateway replica and scheduler.

Each check-and-write (create within the queue cap, a status compare-and-set, the leader lease) is one Lua
script (`vouchers/lua/job_*.lua`). Keys are built in `vouchers.redis_keys.JobKeys`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from vouchers.clock import Clock
from vouchers.deployments import Deployment, DeploymentState, decode_deployment, encode_deployment
from vouchers.errors import Conflict
from vouchers.job_rules import NodeInfo
from vouchers.jobs import (
    Estimate,
    Job,
    JobStatus,
    QueueFull,
    Usage,
    check_transition,
    decode_job,
    decode_nodes,
    encode_job,
    encode_nodes,
)
from vouchers.redis_keys import JobKeys

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# The connection's reply timeout must outlast a blocking pop by this much.
_BLOCK_MARGIN_S = 5.0


def _script(client: aioredis.Redis, name: str) -> Any:
    return client.register_script((resources.files("vouchers") / "lua" / f"{name}.lua").read_text())


class RedisJobs:
    """Job records, the leader lease and fair-share usage on Redis."""

    def __init__(self, client: aioredis.Redis, namespace: str, clock: Clock) -> None:
        self._r: Any = client
        self._keys = JobKeys(namespace)
        self._clock = clock
        self._create = _script(client, "job_create")
        self._transition = _script(client, "job_transition")
        self._charge = _script(client, "job_charge")
        self._lead = _script(client, "job_lead")

    @classmethod
    async def open(cls, url: str, *, namespace: str, clock: Clock, timeout_s: float = 5.0) -> RedisJobs:
        """Connect (binary replies: archives are bytes); every call is bounded by `timeout_s`."""
        client = aioredis.Redis.from_url(
            url, decode_responses=False, socket_timeout=timeout_s + _BLOCK_MARGIN_S, socket_connect_timeout=timeout_s
        )
        await client.ping()
        return cls(client, namespace, clock)

    async def close(self) -> None:
        await self._r.aclose()

    async def create(self, job: Job, *, archive: bytes | None = None, max_queued: int | None = None) -> Job:
        k = self._keys
        s = job.startup_id
        keys = [k.job(job.id), k.all(), k.status(JobStatus.QUEUED), k.startup_jobs(s), k.startup_queued(s),
                k.idempotency(s), k.archive(job.id)]
        args = [job.id, encode_job(job), repr(job.queued_at), job.idempotency_key or "",
                -1 if max_queued is None else max_queued, "1" if archive is not None else "0", archive or b""]
        outcome, value = await self._create(keys=keys, args=args)
        if outcome == 2:
            raise QueueFull(f"{int(value)} jobs are queued already, the most this startup may queue")
        if outcome == 1:
            first = await self._read(value.decode(), replayed=True)
            if first is None:
                raise RuntimeError(f"job {value!r} named by an idempotency key is gone")
            return first
        await self.touch()
        return job

    async def get(self, job_id: str) -> Job | None:
        return await self._read(job_id)

    async def _read(self, job_id: str, *, replayed: bool = False) -> Job | None:
        fields = await self._r.hgetall(self._keys.job(job_id))
        return None if not fields else _decode(fields, replayed=replayed)

    async def list_jobs(
        self, startup_id: str | None = None, *, statuses: Collection[JobStatus] | None = None, limit: int = 1000
    ) -> list[Job]:
        wanted = set(statuses) if statuses is not None else None
        if wanted is not None and wanted <= set(_ACTIVE) and startup_id is None:
            ids: list[bytes] = []
            for status in wanted:
                ids.extend(await self._r.smembers(self._keys.status(status)))
        else:
            index = self._keys.startup_jobs(startup_id) if startup_id is not None else self._keys.all()
            ids = await self._r.zrevrange(index, 0, -1 if wanted is not None else limit - 1)
        jobs: list[Job] = []
        pipe = self._r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._keys.job(job_id.decode()))
        for fields in await pipe.execute():
            if not fields:
                continue
            job = _decode(fields)
            if (wanted is None or job.status in wanted) and (startup_id is None or job.startup_id == startup_id):
                jobs.append(job)
        jobs.sort(key=lambda j: (j.queued_at, j.id), reverse=True)
        return jobs[:limit]

    async def transition(
        self, job_id: str, expect: JobStatus, to: JobStatus, changes: Mapping[str, object] | None = None
    ) -> Job | None:
        check_transition(expect, to, changes or {})
        job = await self.get(job_id)
        if job is None:
            return None
        k = self._keys
        args: list[object] = [job_id, expect.value, to.value]
        for name, value in (changes or {}).items():
            args.extend((f"f:{name}", orjson.dumps(value)))
        keys = [k.job(job_id), k.status(expect), k.status(to), k.startup_queued(job.startup_id)]
        if not await self._transition(keys=keys, args=args):
            return None
        if to is JobStatus.CANCELLED:
            await self.touch()
        return job.with_changes({**(changes or {}), "status": to})

    async def note_charge(self, job_id: str, *, gpu_ms: int, charged_ms: int) -> None:
        await self._charge(keys=[self._keys.job(job_id)], args=[gpu_ms, charged_ms])

    async def archive(self, job_id: str) -> bytes | None:
        data = await self._r.get(self._keys.archive(job_id))
        return None if data is None else bytes(data)

    async def set_logs(self, job_id: str, text: str) -> None:
        await self._r.set(self._keys.logs(job_id), text.encode())

    async def logs(self, job_id: str) -> str | None:
        data = await self._r.get(self._keys.logs(job_id))
        return None if data is None else bytes(data).decode(errors="replace")

    async def lead(self, instance: str, *, ttl_s: float) -> bool:
        return bool(await self._lead(keys=[self._keys.leader()], args=[instance, max(1, int(ttl_s * 1000))]))

    async def usage(self) -> dict[str, Usage]:
        raw = await self._r.hgetall(self._keys.usage())
        out: dict[str, Usage] = {}
        for startup, packed in raw.items():
            value, as_of = packed.decode().split("|")
            out[startup.decode()] = Usage(float(value), float(as_of))
        return out

    async def set_usage(self, startup_id: str, usage: Usage) -> None:
        await self._r.hset(self._keys.usage(), startup_id, f"{usage.value!r}|{usage.as_of!r}")

    async def touch(self) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(self._keys.wake(), b"1")
        pipe.ltrim(self._keys.wake(), 0, 0)
        await pipe.execute()

    async def wait_changed(self, timeout_s: float) -> bool:
        # BLPOP's timeout is whole seconds or a float (Redis >= 6); 0 would block forever.
        popped = await self._r.blpop([self._keys.wake()], timeout=max(timeout_s, 0.01))
        return popped is not None

    async def set_capacity(self, nodes: Sequence[NodeInfo]) -> None:
        await self._r.set(self._keys.capacity(), encode_nodes(nodes))

    async def capacity(self) -> list[NodeInfo] | None:
        data = await self._r.get(self._keys.capacity())
        return None if data is None else decode_nodes(data)

    async def set_estimates(self, estimates: Mapping[str, Estimate]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._keys.estimates())
        if estimates:
            pipe.hset(self._keys.estimates(), mapping={
                job_id: f"{e.position}|{'' if e.start_at is None else repr(e.start_at)}"
                for job_id, e in estimates.items()})
        await pipe.execute()

    async def estimates(self, job_ids: Collection[str]) -> dict[str, Estimate]:
        ids = list(job_ids)
        if not ids:
            return {}
        values = await self._r.hmget(self._keys.estimates(), ids)
        out: dict[str, Estimate] = {}
        for job_id, packed in zip(ids, values, strict=True):
            if packed is not None:
                position, start_at = packed.decode().split("|")
                out[job_id] = Estimate(int(position), float(start_at) if start_at else None)
        return out

    async def create_deployment(self, deployment: Deployment) -> Deployment:
        if not await self._r.hsetnx(self._keys.deployments(), deployment.id, encode_deployment(deployment)):
            raise Conflict(f"deployment {deployment.id} exists")
        return deployment

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        raw = await self._r.hget(self._keys.deployments(), deployment_id)
        return None if raw is None else decode_deployment(raw)

    async def list_deployments(self, *, include_final: bool = True) -> list[Deployment]:
        found = [decode_deployment(raw) for raw in (await self._r.hgetall(self._keys.deployments())).values()]
        found = [d for d in found if include_final or not d.state.is_final()]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def update_deployment(self, deployment_id: str, expect: DeploymentState,
                                changes: Mapping[str, object]) -> Deployment | None:
        key = self._keys.deployments()
        async with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, deployment_id)
                    current = None if raw is None else decode_deployment(raw)
                    if current is None or current.state is not expect or current.state.is_final():
                        await pipe.unwatch()
                        return None
                    new = current.with_changes(changes)
                    pipe.multi()
                    pipe.hset(key, deployment_id, encode_deployment(new))
                    await pipe.execute()
                except WatchError:
                    continue
                await self.touch()
                return new


def _decode(fields: Mapping[bytes, bytes], *, replayed: bool = False) -> Job:
    doc = orjson.loads(fields[b"doc"])
    for name, value in fields.items():
        if name.startswith(b"f:"):
            doc[name[2:].decode()] = orjson.loads(value)
    doc["status"] = fields[b"status"].decode()
    return decode_job(orjson.dumps(doc), replayed=replayed)

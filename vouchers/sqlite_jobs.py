"""`vouchers.jobs.JobStore` on SQLite: job records in the ledger's file, through its runner thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Collection, Mapping, Sequence

from vouchers.clock import Clock
from vouchers.deployments import Deployment, DeploymentState, decode_deployment, encode_deployment
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
from vouchers.sqlite_runner import SqliteRunner

# How often a waiting scheduler looks for a change made by another process (SQLite cannot notify).
_POLL_S = 0.1


class SqliteJobs:
    """Job records, the leader lease and fair-share usage in the ledger's SQLite file."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._run = runner.run
        self._clock = clock
        self._seen = -1
        # A change made through this object (the gateway and scheduler of one process share it) wakes a
        # waiter at once; one made by another process is found by polling the file's counter.
        self._changed = asyncio.Event()

    async def create(self, job: Job, *, archive: bytes | None = None, max_queued: int | None = None) -> Job:
        def op(conn: sqlite3.Connection) -> Job:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT status, doc FROM jobs WHERE startup_id = ? AND idempotency_key = ?",
                    (job.startup_id, job.idempotency_key),
                ).fetchone()
                if row is not None:
                    return _decode(row, replayed=True)
            if max_queued is not None:
                (queued,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE startup_id = ? AND status = 'QUEUED'", (job.startup_id,)
                ).fetchone()
                if queued >= max_queued:
                    raise QueueFull(f"{queued} jobs are queued already, the most this startup may queue")
            conn.execute(
                "INSERT INTO jobs (id, startup_id, status, idempotency_key, queued_at, doc) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.startup_id, job.status.value, job.idempotency_key, job.queued_at, encode_job(job)),
            )
            if archive is not None:
                conn.execute("INSERT INTO job_files (job_id, name, data) VALUES (?, 'archive', ?)", (job.id, archive))
            _bump(conn)
            return job

        created = await self._run(op, write=True)
        self._changed.set()
        return created

    async def get(self, job_id: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT status, doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _decode(row)

        return await self._run(op, write=False)

    async def list_jobs(
        self, startup_id: str | None = None, *, statuses: Collection[JobStatus] | None = None, limit: int = 1000
    ) -> list[Job]:
        where: list[str] = []
        args: list[object] = []
        if startup_id is not None:
            where.append("startup_id = ?")
            args.append(startup_id)
        if statuses is not None:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(s.value for s in statuses)
        sql = "SELECT status, doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY queued_at DESC, id DESC LIMIT ?"
        args.append(limit)

        def op(conn: sqlite3.Connection) -> list[Job]:
            return [_decode(row) for row in conn.execute(sql, args)]

        return await self._run(op, write=False)

    async def transition(
        self, job_id: str, expect: JobStatus, to: JobStatus, changes: Mapping[str, object] | None = None
    ) -> Job | None:
        check_transition(expect, to, changes or {})

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT status, doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != expect.value:
                return None
            job = _decode(row).with_changes({**(changes or {}), "status": to})
            conn.execute("UPDATE jobs SET status = ?, doc = ? WHERE id = ?", (to.value, encode_job(job), job_id))
            _bump(conn)
            return job

        return await self._run(op, write=True)

    async def note_charge(self, job_id: str, *, gpu_ms: int, charged_ms: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT status, doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            job = _decode(row)
            if gpu_ms <= job.charged_gpu_ms and charged_ms <= job.charged_ms:
                return
            job = job.with_changes({"charged_gpu_ms": max(gpu_ms, job.charged_gpu_ms),
                                    "charged_ms": max(charged_ms, job.charged_ms)})
            conn.execute("UPDATE jobs SET doc = ? WHERE id = ?", (encode_job(job), job_id))

        await self._run(op, write=True)

    async def archive(self, job_id: str) -> bytes | None:
        return await self._file(job_id, "archive")

    async def set_logs(self, job_id: str, text: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO job_files (job_id, name, data) VALUES (?, 'logs', ?) "
                "ON CONFLICT (job_id, name) DO UPDATE SET data = excluded.data",
                (job_id, text.encode()),
            )

        await self._run(op, write=True)

    async def logs(self, job_id: str) -> str | None:
        data = await self._file(job_id, "logs")
        return None if data is None else data.decode(errors="replace")

    async def _file(self, job_id: str, name: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM job_files WHERE job_id = ? AND name = ?", (job_id, name)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(op, write=False)

    async def lead(self, instance: str, *, ttl_s: float) -> bool:
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT holder, expires_at FROM scheduler_leases WHERE name = 'scheduler'").fetchone()
            if row is not None and row[0] != instance and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO scheduler_leases (name, holder, expires_at) VALUES ('scheduler', ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (instance, now + ttl_s),
            )
            return True

        return await self._run(op, write=True)

    async def usage(self) -> dict[str, Usage]:
        def op(conn: sqlite3.Connection) -> dict[str, Usage]:
            rows = conn.execute("SELECT startup_id, value, as_of FROM fair_share")
            return {sid: Usage(value, as_of) for sid, value, as_of in rows}

        return await self._run(op, write=False)

    async def set_usage(self, startup_id: str, usage: Usage) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO fair_share (startup_id, value, as_of) VALUES (?, ?, ?) "
                "ON CONFLICT (startup_id) DO UPDATE SET value = excluded.value, as_of = excluded.as_of",
                (startup_id, usage.value, usage.as_of),
            )

        await self._run(op, write=True)

    async def touch(self) -> None:
        await self._run(_bump, write=True)
        self._changed.set()

    async def wait_changed(self, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if self._changed.is_set():
                self._changed.clear()
                self._seen = await self._run(_counter, write=False)
                return True
            counter = await self._run(_counter, write=False)
            if self._seen >= 0 and counter != self._seen:
                self._seen = counter
                return True
            self._seen = counter
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(_POLL_S, left))

    async def set_capacity(self, nodes: Sequence[NodeInfo]) -> None:
        data = encode_nodes(nodes)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO job_files (job_id, name, data) VALUES ('', 'capacity', ?) "
                "ON CONFLICT (job_id, name) DO UPDATE SET data = excluded.data",
                (data,),
            )

        await self._run(op, write=True)

    async def capacity(self) -> list[NodeInfo] | None:
        data = await self._file("", "capacity")
        return None if data is None else decode_nodes(data)

    async def set_estimates(self, estimates: Mapping[str, Estimate]) -> None:
        rows = [(job_id, e.position, e.start_at) for job_id, e in estimates.items()]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM queue_estimates")
            conn.executemany("INSERT INTO queue_estimates (job_id, position, start_at) VALUES (?, ?, ?)", rows)

        await self._run(op, write=True)

    async def estimates(self, job_ids: Collection[str]) -> dict[str, Estimate]:
        ids = list(job_ids)

        def op(conn: sqlite3.Connection) -> dict[str, Estimate]:
            out: dict[str, Estimate] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = conn.execute("SELECT job_id, position, start_at FROM queue_estimates WHERE job_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
                out.update({job_id: Estimate(position, start_at) for job_id, position, start_at in rows})
            return out

        return await self._run(op, write=False)

    async def create_deployment(self, deployment: Deployment) -> Deployment:
        def op(conn: sqlite3.Connection) -> Deployment:
            conn.execute("INSERT INTO deployments (id, state, created_at, doc) VALUES (?, ?, ?, ?)",
                         (deployment.id, deployment.state.value, deployment.created_at, encode_deployment(deployment)))
            return deployment

        return await self._run(op, write=True)

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        def op(conn: sqlite3.Connection) -> Deployment | None:
            row = conn.execute("SELECT doc FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
            return None if row is None else decode_deployment(row[0])

        return await self._run(op, write=False)

    async def list_deployments(self, *, include_final: bool = True) -> list[Deployment]:
        sql = "SELECT doc FROM deployments"
        if not include_final:
            sql += " WHERE state NOT IN ('STOPPED', 'FAILED')"
        sql += " ORDER BY created_at, id"

        def op(conn: sqlite3.Connection) -> list[Deployment]:
            return [decode_deployment(row[0]) for row in conn.execute(sql)]

        return await self._run(op, write=False)

    async def update_deployment(self, deployment_id: str, expect: DeploymentState,
                                changes: Mapping[str, object]) -> Deployment | None:
        def op(conn: sqlite3.Connection) -> Deployment | None:
            row = conn.execute("SELECT doc FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
            if row is None:
                return None
            current = decode_deployment(row[0])
            if current.state is not expect or current.state.is_final():
                return None
            new = current.with_changes(changes)
            conn.execute("UPDATE deployments SET state = ?, doc = ? WHERE id = ?",
                         (new.state.value, encode_deployment(new), deployment_id))
            _bump(conn)
            return new

        return await self._run(op, write=True)


def _decode(row: tuple[str, bytes], *, replayed: bool = False) -> Job:
    return decode_job(row[1], replayed=replayed)


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE job_changes SET counter = counter + 1 WHERE id = 1")


def _counter(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT counter FROM job_changes WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])

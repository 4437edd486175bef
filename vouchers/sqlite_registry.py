"""The worker registry on SQLite (`vouchers.registry`)."""

from __future__ import annotations

import sqlite3
from typing import Any

from vouchers import rules
from vouchers.clock import Clock
from vouchers.models import WorkerRecord
from vouchers.sqlite_runner import SqliteRunner

WORKER_COLUMNS = (
    "id, model, url, engine, owner, capacity, node, context_length, tokenize_path, health_path, embeddings,"
    " heartbeat_at"
)


class SqliteRegistry:
    """The `Registry` protocol on SQLite."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        rules.check_ttl(ttl_s)
        w = worker
        row = (w.id, w.model, w.url, w.engine, w.owner, w.capacity, w.node, w.context_length, w.tokenize_path,
               w.health_path, int(w.embeddings), self._clock.now(), ttl_s)
        await self._runner.run(
            lambda conn: conn.execute(
                f"INSERT OR REPLACE INTO workers ({WORKER_COLUMNS}, ttl_s) VALUES ({', '.join('?' * 13)})", row),
            write=True)

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        rules.check_ttl(ttl_s)

        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock.now()
            # A worker whose TTL ran out is gone, as if its key had expired: it must register again.
            conn.execute("DELETE FROM workers WHERE id = ? AND heartbeat_at + ttl_s <= ?", (worker_id, now))
            cursor = conn.execute(
                "UPDATE workers SET heartbeat_at = ?, ttl_s = ? WHERE id = ?", (now, ttl_s, worker_id)
            )
            return cursor.rowcount > 0

        return await self._runner.run(op, write=True)

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker at once."""
        await self._runner.run(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,)), write=True)

    async def list_workers(self, model: str | None = None) -> list[WorkerRecord]:
        """Workers whose heartbeat is within their TTL, optionally for one model."""
        sql = f"SELECT {WORKER_COLUMNS} FROM workers WHERE heartbeat_at + ttl_s > :now"
        if model is not None:
            sql += " AND model = :model"

        def op(conn: sqlite3.Connection) -> list[WorkerRecord]:
            rows = conn.execute(sql + " ORDER BY id", {"now": self._clock.now(), "model": model}).fetchall()
            return [_worker(row) for row in rows]

        return await self._runner.run(op, write=False)


def _worker(row: Any) -> WorkerRecord:
    return WorkerRecord(
        id=row[0], model=row[1], url=row[2], engine=row[3], owner=row[4], capacity=row[5], node=row[6],
        context_length=row[7], tokenize_path=row[8], health_path=row[9], embeddings=bool(row[10]),
        heartbeat_at=row[11],
    )

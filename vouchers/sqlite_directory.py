"""Startups and API keys on SQLite (`vouchers.directory`), and the two checks other parts run inside
their own transaction: that a startup exists, and that a key is not revoked."""

from __future__ import annotations

import sqlite3

from vouchers.clock import Clock
from vouchers.errors import Conflict, InvalidRequest, NotFound
from vouchers.models import ApiKey, Startup
from vouchers.sqlite_runner import SqliteRunner

KEY_COLUMNS = "id, startup_id, name, key_hash, prefix, created_at, revoked_at"


def require_startup(conn: sqlite3.Connection, startup_id: str) -> None:
    """NotFound unless the startup exists."""
    if conn.execute("SELECT 1 FROM startups WHERE id = ?", (startup_id,)).fetchone() is None:
        raise NotFound(f"no startup {startup_id}", param="startup_id")


def key_revoked(conn: sqlite3.Connection, key_id: str | None) -> bool:
    """True when `key_id` is given and names a revoked key."""
    if key_id is None:
        return False
    row = conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return row is not None and row[0] is not None


class SqliteDirectory:
    """The `Directory` protocol on SQLite. Revocations are not announced (`vouchers.events.Unheard`)."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    async def create_startup(self, startup_id: str, name: str) -> Startup:
        """Create a startup; Conflict if the id exists."""
        if not startup_id:
            raise InvalidRequest("startup id must not be empty", param="id")

        def op(conn: sqlite3.Connection) -> Startup:
            startup = Startup(startup_id, name, self._clock.now())
            try:
                conn.execute(
                    "INSERT INTO startups (id, name, created_at) VALUES (?, ?, ?)",
                    (startup_id, name, startup.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"startup {startup_id} exists", param="id") from exc
            return startup

        return await self._runner.run(op, write=True)

    async def get_startup(self, startup_id: str) -> Startup | None:
        """The startup, or None."""
        row = await self._runner.run(
            lambda conn: conn.execute("SELECT id, name, created_at FROM startups WHERE id = ?", (startup_id,))
            .fetchone(), write=False)
        return None if row is None else Startup(*row)

    async def list_startups(self) -> list[Startup]:
        """Every startup, oldest first."""
        rows = await self._runner.run(
            lambda conn: conn.execute("SELECT id, name, created_at FROM startups ORDER BY created_at, id").fetchall(),
            write=False)
        return [Startup(*row) for row in rows]

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""

        def op(conn: sqlite3.Connection) -> ApiKey:
            require_startup(conn, key.startup_id)
            try:
                conn.execute(
                    f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key.id, key.startup_id, key.name, key.key_hash, key.prefix, key.created_at, key.revoked_at),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict("a key with this id or hash exists", param="key") from exc
            return key

        return await self._runner.run(op, write=True)

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        row = await self._runner.run(
            lambda conn: conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
            .fetchone(), write=False)
        return None if row is None else ApiKey(*row)

    async def list_keys(self, startup_id: str) -> list[ApiKey]:
        """A startup's keys, oldest first."""
        rows = await self._runner.run(
            lambda conn: conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE startup_id = ? ORDER BY created_at, id", (startup_id,)
            ).fetchall(), write=False)
        return [ApiKey(*row) for row in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once; NotFound if unknown. Revoking twice keeps the first time."""

        def op(conn: sqlite3.Connection) -> ApiKey:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._clock.now(), key_id)
            )
            row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFound(f"no key {key_id}", param="key_id")
            return ApiKey(*row)

        return await self._runner.run(op, write=True)

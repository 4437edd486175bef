"""The embedded store: one SQLite file in WAL mode, safe for several processes on one host.

All SQL runs on one dedicated thread per store (`SqliteRunner`), so the async API never blocks the
event loop; every write is `BEGIN IMMEDIATE`, so a check and the write that depends on it can never
interleave with another process. The ledger rules themselves live in `vouchers.sqlite_ledger`.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from vouchers import sqlite_ledger as ledger
from vouchers.clock import Clock
from vouchers.errors import BAD_KEY, AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.events import Listener
from vouchers.keys import new_id
from vouchers.models import (
    ApiKey,
    Balance,
    ChargeRef,
    Hold,
    JournalLine,
    Limits,
    Price,
    RateDecision,
    Startup,
    UsageTotal,
    Voucher,
    WorkerRecord,
)
from vouchers.sqlite_runner import SqliteRunner
from vouchers.units import Kind

KEY_COLUMNS = "id, startup_id, name, key_hash, prefix, created_at, revoked_at"
WORKER_COLUMNS = (
    "id, model, url, engine, owner, capacity, node, context_length, tokenize_path, health_path, embeddings,"
    " heartbeat_at"
)
RATE_WINDOW_S = 60.0


class SqliteStore:
    """The `Store` protocol on SQLite; open it with `await SqliteStore.open(path, clock=...)`."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    @classmethod
    async def open(cls, path: Path, *, clock: Clock) -> SqliteStore:
        """Open (creating the directory and schema if needed) the ledger at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        runner = SqliteRunner(path)
        await runner.start()
        return cls(runner, clock)

    async def close(self) -> None:
        """Finish queued work, close the connection and stop the thread."""
        await self._runner.close()

    # ledger events: none. Another process on the same file could revoke a key or void a voucher unheard,
    # so a gateway on SQLite checks each request in the ledger itself (no remembered keys, no leases).

    async def watch(self, listener: Listener) -> None:
        pass

    async def unwatch(self, listener: Listener) -> None:
        pass

    @property
    def watching(self) -> bool:
        return False

    # startups and keys

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
        row = await self._read_one("SELECT id, name, created_at FROM startups WHERE id = ?", (startup_id,))
        return None if row is None else Startup(*row)

    async def list_startups(self) -> list[Startup]:
        """Every startup, oldest first."""
        rows = await self._read_all("SELECT id, name, created_at FROM startups ORDER BY created_at, id", ())
        return [Startup(*row) for row in rows]

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""

        def op(conn: sqlite3.Connection) -> ApiKey:
            _require_startup(conn, key.startup_id)
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
        row = await self._read_one(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return None if row is None else ApiKey(*row)

    async def list_keys(self, startup_id: str) -> list[ApiKey]:
        """A startup's keys, oldest first."""
        rows = await self._read_all(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE startup_id = ? ORDER BY created_at, id", (startup_id,)
        )
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

    # vouchers

    async def grant(
        self,
        startup_id: str,
        kind: Kind,
        amount: int,
        *,
        effective_at: float | None = None,
        expires_at: float | None = None,
        priority: int = 0,
        note: str = "",
    ) -> Voucher:
        """Grant a voucher (effective now unless told); NotFound if the startup does not exist."""
        ledger.check_amount(amount, "amount")
        kind = Kind(kind)

        def op(conn: sqlite3.Connection) -> Voucher:
            _require_startup(conn, startup_id)
            now = self._clock.now()
            start = now if effective_at is None else effective_at
            if expires_at is not None and expires_at <= start:
                raise InvalidRequest("expires_at must be after effective_at", param="expires_at")
            voucher = Voucher(new_id("vch"), startup_id, kind, amount, start, expires_at, priority, note, now)
            conn.execute(
                f"INSERT INTO vouchers ({ledger.VOUCHER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, 0)",
                (voucher.id, startup_id, kind.value, amount, start, expires_at, priority, note, now),
            )
            return voucher

        return await self._runner.run(op, write=True)

    async def void_voucher(self, voucher_id: str) -> Voucher:
        """Stop a voucher burning; past usage stands. NotFound if unknown."""

        def op(conn: sqlite3.Connection) -> Voucher:
            conn.execute(
                "UPDATE vouchers SET voided_at = ? WHERE id = ? AND voided_at IS NULL", (self._clock.now(), voucher_id)
            )
            voucher = _voucher(conn, voucher_id)
            if voucher is None:
                raise NotFound(f"no voucher {voucher_id}", param="voucher_id")
            return voucher

        return await self._runner.run(op, write=True)

    async def get_voucher(self, voucher_id: str) -> Voucher | None:
        """The voucher with its current spent and held, or None."""
        return await self._runner.run(lambda conn: _voucher(conn, voucher_id), write=False)

    async def list_vouchers(self, startup_id: str, kind: Kind | None = None) -> list[Voucher]:
        """A startup's vouchers in force or not, in burn order."""
        sql = f"SELECT {ledger.VOUCHER_COLUMNS} FROM vouchers WHERE startup_id = ?"
        params: tuple[Any, ...] = (startup_id,)
        if kind is not None:
            sql += " AND kind = ?"
            params = (startup_id, Kind(kind).value)
        rows = await self._read_all(f"{sql} ORDER BY {ledger.BURN_ORDER}", params)
        return [ledger.voucher_from_row(row) for row in rows]

    # holds

    async def reserve(self, startup_id: str, kind: Kind, amount: int, *, ttl_s: float, idempotency_key: str,
                      key_id: str | None = None) -> Hold:
        """Hold `amount` atomically or raise InsufficientQuota; same key returns the first hold."""
        kind = Kind(kind)
        outcome = await self._runner.run(
            lambda conn: ledger.reserve(conn, self._clock.now(), startup_id, kind, amount, ttl_s, idempotency_key,
                                        key_id),
            write=True,
        )
        if isinstance(outcome, InsufficientQuota | AuthenticationError | NotFound):
            raise outcome
        return outcome

    async def extend(self, hold_id: str, *, ttl_s: float, add_amount: int = 0) -> Hold:
        """Push an open hold's expiry to now + ttl_s and optionally hold more (all-or-nothing)."""
        outcome = await self._runner.run(
            lambda conn: ledger.extend(conn, self._clock.now(), hold_id, ttl_s, add_amount), write=True
        )
        if isinstance(outcome, InsufficientQuota):
            raise outcome
        return outcome

    async def settle(
        self,
        hold_id: str,
        actual: int,
        ref: ChargeRef,
        *,
        final: bool = True,
        idempotency_key: str | None = None,
    ) -> JournalLine:
        """Debit `actual` against a hold; see `vouchers.store` for the exact rules."""
        return await self._runner.run(
            lambda conn: ledger.settle(conn, self._clock.now(), hold_id, actual, ref, final, idempotency_key),
            write=True,
        )

    async def charge(self, hold_id: str, actual: int, ref: ChargeRef) -> None:
        """`settle(hold_id, actual, ref, final=True)` without returning its journal line."""
        await self.settle(hold_id, actual, ref)

    async def release(self, hold_id: str) -> Hold:
        """Free what an open hold still holds; NotFound if unknown."""
        return await self._runner.run(lambda conn: ledger.release(conn, hold_id), write=True)

    async def get_hold(self, hold_id: str) -> Hold | None:
        """The hold, or None."""
        return await self._runner.run(lambda conn: ledger.get_hold(conn, hold_id), write=False)

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        return await self._runner.run(lambda conn: ledger.release_expired(conn, self._clock.now()), write=True)

    # reading the ledger

    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        return await self._runner.run(lambda conn: ledger.balance(conn, self._clock.now(), startup_id), write=False)

    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first); `since` inclusive, `until` exclusive."""
        return await self._runner.run(lambda conn: ledger.journal(conn, startup_id, since, until, limit), write=False)

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        return await self._runner.run(ledger.usage_totals, write=False)

    # prices and limits

    async def set_price(self, price: Price) -> Price:
        """Set (or replace) a model's price."""

        def op(conn: sqlite3.Connection) -> Price:
            conn.execute(
                "INSERT INTO prices (model, input_per_1m, output_per_1m) VALUES (?, ?, ?) ON CONFLICT (model)"
                " DO UPDATE SET input_per_1m = excluded.input_per_1m, output_per_1m = excluded.output_per_1m",
                (price.model, price.input_per_1m, price.output_per_1m),
            )
            return price

        return await self._runner.run(op, write=True)

    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer (UTF-8 text, such as JSON) under its idempotency key for `ttl_s`, and
        drop answers past theirs; False (nothing kept) past the startup's `budget_bytes`."""
        ledger.check_ttl(ttl_s)
        try:
            answer.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest("an answer to keep must be UTF-8 text", param="answer") from exc
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM answers WHERE expires_at <= ?", (now,))
            if budget_bytes is not None:
                (used,) = conn.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM answers WHERE startup_id = ? "
                                       "AND key != ?", (startup_id, key)).fetchone()
                if used + len(answer) > budget_bytes:
                    return False
            conn.execute("INSERT OR REPLACE INTO answers (startup_id, key, body, expires_at) VALUES (?, ?, ?, ?)",
                         (startup_id, key, answer, now + ttl_s))
            return True

        return await self._runner.run(op, write=True)

    async def kept_answer(self, startup_id: str, key: str) -> bytes | None:
        """The answer kept under this key, or None."""
        row = await self._read_one("SELECT body FROM answers WHERE startup_id = ? AND key = ? AND expires_at > ?",
                                   (startup_id, key, self._clock.now()))
        return None if row is None else bytes(row[0])

    async def get_price(self, model: str) -> Price | None:
        """A model's price, or None."""
        row = await self._read_one("SELECT model, input_per_1m, output_per_1m FROM prices WHERE model = ?", (model,))
        return None if row is None else Price(*row)

    async def list_prices(self) -> list[Price]:
        """Every price, by model name."""
        rows = await self._read_all("SELECT model, input_per_1m, output_per_1m FROM prices ORDER BY model", ())
        return [Price(*row) for row in rows]

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits:
        """Set a startup's rate limits (None: no limit); NotFound if the startup does not exist."""

        def op(conn: sqlite3.Connection) -> Limits:
            _require_startup(conn, startup_id)
            conn.execute(
                "INSERT INTO limits (startup_id, rpm, tpm) VALUES (?, ?, ?) ON CONFLICT (startup_id)"
                " DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm",
                (startup_id, limits.rpm, limits.tpm),
            )
            return limits

        return await self._runner.run(op, write=True)

    async def get_limits(self, startup_id: str) -> Limits:
        """A startup's rate limits; none by default."""
        row = await self._read_one("SELECT rpm, tpm FROM limits WHERE startup_id = ?", (startup_id,))
        return Limits() if row is None else Limits(*row)

    async def rate_limit(self, startup_id: str, limits: Limits, *, requests: int, tokens: int,
                         key_id: str | None = None) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed."""
        outcome = await self._runner.run(
            lambda conn: AuthenticationError(BAD_KEY) if ledger.key_revoked(conn, key_id)
            else _rate_limit(conn, self._clock.now(), startup_id, limits, requests, tokens), write=True
        )
        if isinstance(outcome, AuthenticationError):
            raise outcome
        return outcome

    # worker registry

    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        ledger.check_ttl(ttl_s)

        def op(conn: sqlite3.Connection) -> None:
            w = worker
            conn.execute(
                f"INSERT OR REPLACE INTO workers ({WORKER_COLUMNS}, ttl_s) VALUES ({', '.join('?' * 13)})",
                (
                    w.id,
                    w.model,
                    w.url,
                    w.engine,
                    w.owner,
                    w.capacity,
                    w.node,
                    w.context_length,
                    w.tokenize_path,
                    w.health_path,
                    int(w.embeddings),
                    self._clock.now(),
                    ttl_s,
                ),
            )

        await self._runner.run(op, write=True)

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        ledger.check_ttl(ttl_s)

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

    # helpers

    async def _read_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        return await self._runner.run(lambda conn: conn.execute(sql, params).fetchone(), write=False)

    async def _read_all(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return await self._runner.run(lambda conn: conn.execute(sql, params).fetchall(), write=False)


def _require_startup(conn: sqlite3.Connection, startup_id: str) -> None:
    if conn.execute("SELECT 1 FROM startups WHERE id = ?", (startup_id,)).fetchone() is None:
        raise NotFound(f"no startup {startup_id}", param="startup_id")


def _voucher(conn: sqlite3.Connection, voucher_id: str) -> Voucher | None:
    row = conn.execute(f"SELECT {ledger.VOUCHER_COLUMNS} FROM vouchers WHERE id = ?", (voucher_id,)).fetchone()
    return None if row is None else ledger.voucher_from_row(row)


def _worker(row: Any) -> WorkerRecord:
    return WorkerRecord(
        id=row[0],
        model=row[1],
        url=row[2],
        engine=row[3],
        owner=row[4],
        capacity=row[5],
        node=row[6],
        context_length=row[7],
        tokenize_path=row[8],
        health_path=row[9],
        embeddings=bool(row[10]),
        heartbeat_at=row[11],
    )


def _rate_limit(
    conn: sqlite3.Connection, now: float, startup_id: str, limits: Limits, requests: int, tokens: int
) -> RateDecision:
    """Fixed one-minute windows: count the request only if both limits still allow it."""
    window = math.floor(now / RATE_WINDOW_S) * RATE_WINDOW_S
    reset_s = window + RATE_WINDOW_S - now
    if limits.rpm is None and limits.tpm is None:
        return RateDecision(True, None, None, None, None, reset_s)
    conn.execute("DELETE FROM rate_windows WHERE startup_id = ? AND window_start < ?", (startup_id, window))
    row = conn.execute(
        "SELECT requests, tokens FROM rate_windows WHERE startup_id = ? AND window_start = ?", (startup_id, window)
    ).fetchone()
    used_requests, used_tokens = row if row is not None else (0, 0)
    allowed = (limits.rpm is None or used_requests + requests <= limits.rpm) and (
        limits.tpm is None or used_tokens + tokens <= limits.tpm
    )
    if allowed:
        used_requests += requests
        used_tokens += tokens
        conn.execute(
            "INSERT INTO rate_windows (startup_id, window_start, requests, tokens) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (startup_id, window_start) DO UPDATE SET requests = excluded.requests,"
            " tokens = excluded.tokens",
            (startup_id, window, used_requests, used_tokens),
        )
    return RateDecision(
        allowed=allowed,
        limit_requests=limits.rpm,
        remaining_requests=None if limits.rpm is None else max(limits.rpm - used_requests, 0),
        limit_tokens=limits.tpm,
        remaining_tokens=None if limits.tpm is None else max(limits.tpm - used_tokens, 0),
        reset_s=reset_s,
        retry_after_s=0.0 if allowed else reset_s,
    )

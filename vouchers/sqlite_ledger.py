"""The ledger on SQLite (`vouchers.ledger`): one file in WAL mode, safe for several processes on one host.

All SQL runs on the store's one thread (`SqliteRunner`), so the async API never blocks the event loop;
every write is `BEGIN IMMEDIATE`, so a check and the write that depends on it can never interleave with
another process. The holds' SQL lives in `vouchers.sqlite_holds`, the rules in `vouchers.rules`.
"""

from __future__ import annotations

import sqlite3

from vouchers import rules
from vouchers import sqlite_holds as holds
from vouchers.clock import Clock
from vouchers.errors import AuthenticationError, InsufficientQuota, NotFound
from vouchers.keys import new_id
from vouchers.models import Balance, ChargeRef, Hold, JournalLine, Voucher
from vouchers.sqlite_directory import require_startup
from vouchers.sqlite_runner import SqliteRunner
from vouchers.units import Kind


class SqliteLedger:
    """The `Ledger` protocol on SQLite. Voids are not announced (`vouchers.events.Unheard`)."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

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
        rules.check_amount(amount, "amount")
        kind = Kind(kind)

        def op(conn: sqlite3.Connection) -> Voucher:
            require_startup(conn, startup_id)
            now = self._clock.now()
            start = now if effective_at is None else effective_at
            rules.check_validity(start, expires_at)
            voucher = Voucher(new_id("vch"), startup_id, kind, amount, start, expires_at, priority, note, now)
            conn.execute(
                f"INSERT INTO vouchers ({holds.VOUCHER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, 0)",
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
        sql = f"SELECT {holds.VOUCHER_COLUMNS} FROM vouchers WHERE startup_id = :startup"
        if kind is not None:
            sql += " AND kind = :kind"
        params = {"startup": startup_id, "kind": None if kind is None else Kind(kind).value}
        rows = await self._runner.run(lambda conn: conn.execute(sql, params).fetchall(), write=False)
        return sorted((holds.voucher_from_row(row) for row in rows), key=rules.burn_key)

    async def reserve(self, startup_id: str, kind: Kind, amount: int, *, ttl_s: float, idempotency_key: str,
                      key_id: str | None = None) -> Hold:
        """Hold `amount` atomically or raise InsufficientQuota; same key returns the first hold."""
        kind = Kind(kind)
        outcome = await self._runner.run(
            lambda conn: holds.reserve(conn, self._clock.now(), startup_id, kind, amount, ttl_s, idempotency_key,
                                       key_id),
            write=True,
        )
        if isinstance(outcome, InsufficientQuota | AuthenticationError | NotFound):
            raise outcome
        return outcome

    async def extend(self, hold_id: str, *, ttl_s: float, add_amount: int = 0) -> Hold:
        """Push an open hold's expiry to now + ttl_s and optionally hold more (all-or-nothing)."""
        outcome = await self._runner.run(
            lambda conn: holds.extend(conn, self._clock.now(), hold_id, ttl_s, add_amount), write=True
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
        """Debit `actual` against a hold; see `vouchers.ledger` for the exact rules."""
        return await self._runner.run(
            lambda conn: holds.settle(conn, self._clock.now(), hold_id, actual, ref, final, idempotency_key),
            write=True,
        )

    async def charge(self, hold_id: str, actual: int, ref: ChargeRef) -> None:
        """`settle(hold_id, actual, ref, final=True)` without returning its journal line."""
        await self.settle(hold_id, actual, ref)

    async def release(self, hold_id: str) -> Hold:
        """Free what an open hold still holds; NotFound if unknown."""
        return await self._runner.run(lambda conn: holds.release(conn, hold_id), write=True)

    async def get_hold(self, hold_id: str) -> Hold | None:
        """The hold, or None."""
        return await self._runner.run(lambda conn: holds.get_hold(conn, hold_id), write=False)

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        return await self._runner.run(lambda conn: holds.release_expired(conn, self._clock.now()), write=True)

    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        return await self._runner.run(lambda conn: _balance(conn, self._clock.now(), startup_id), write=False)


def _voucher(conn: sqlite3.Connection, voucher_id: str) -> Voucher | None:
    row = conn.execute(f"SELECT {holds.VOUCHER_COLUMNS} FROM vouchers WHERE id = ?", (voucher_id,)).fetchone()
    return None if row is None else holds.voucher_from_row(row)


def _balance(conn: sqlite3.Connection, now: float, startup_id: str) -> Balance:
    require_startup(conn, startup_id)
    vouchers = holds.live_vouchers(conn, now, startup_id)
    return Balance(
        startup_id=startup_id,
        model=rules.kind_balance(v for v in vouchers if v.kind is Kind.MODEL),
        compute=rules.kind_balance(v for v in vouchers if v.kind is Kind.COMPUTE),
        vouchers=tuple(vouchers),
    )

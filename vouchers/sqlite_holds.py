"""The holds of the SQLite ledger as plain functions of one connection: reserve, extend, settle, release.

Each function runs inside a transaction the caller opened with `BEGIN IMMEDIATE` (see
`vouchers.sqlite_runner`), so every check and the debit that depends on it see the same state.
Raising undoes the function's own writes (the runner rolls them back). reserve and extend return
InsufficientQuota instead of raising it, so the release of expired holds they did first is kept.
What is in force, the burn order and the allocation are decided by `vouchers.rules`; SQL only narrows
which rows are read.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import time
from typing import Any, NamedTuple

from vouchers import rules
from vouchers.errors import BAD_KEY, AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.models import ChargeRef, Hold, HoldStatus, JournalLine, Voucher
from vouchers.sqlite_directory import key_revoked
from vouchers.sqlite_journal import add_usage, append_journal, journal_by_key, journal_by_seq
from vouchers.units import Kind

VOUCHER_COLUMNS = (
    "id, startup_id, kind, amount, effective_at, expires_at, priority, note, created_at, voided_at, spent, held"
)
# What the rules read of a voucher (`_Terms`), for the hot paths; V_TERMS for queries that join vouchers as `v`.
TERMS = "id, priority, effective_at, expires_at, voided_at, created_at, amount, spent, held"
V_TERMS = ", ".join(f"v.{c.strip()}" for c in TERMS.split(","))
HOLD_COLUMNS = "id, startup_id, kind, amount, idempotency_key, created_at, expires_at, status, settled, final_seq"
# Narrows a scan to the vouchers that may still burn (not voided, not expired); rules.in_force decides.
NOT_ENDED = "voided_at IS NULL AND (expires_at IS NULL OR expires_at > :now)"

_OPEN, _SETTLED, _RELEASED = HoldStatus.OPEN.value, HoldStatus.SETTLED.value, HoldStatus.RELEASED.value


class _Terms(NamedTuple):
    """A voucher as reserve and settle read it: a plain tuple, several times cheaper to build than a Voucher."""

    id: str
    priority: int
    effective_at: float
    expires_at: float | None
    voided_at: float | None
    created_at: float
    amount: int
    spent: int
    held: int


def voucher_from_row(row: Any) -> Voucher:
    """A Voucher from a row selected with VOUCHER_COLUMNS."""
    return Voucher(
        id=row[0],
        startup_id=row[1],
        kind=Kind(row[2]),
        amount=row[3],
        effective_at=row[4],
        expires_at=row[5],
        priority=row[6],
        note=row[7],
        created_at=row[8],
        voided_at=row[9],
        spent=row[10],
        held=row[11],
    )


def live_vouchers(conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind | None = None) -> list[Voucher]:
    """A startup's vouchers in force (of one kind, or both), in burn order."""
    sql = f"SELECT {VOUCHER_COLUMNS} FROM vouchers WHERE startup_id = :startup AND {NOT_ENDED}"
    if kind is not None:
        sql += " AND kind = :kind"
    rows = conn.execute(sql, {"startup": startup_id, "kind": None if kind is None else kind.value, "now": now})
    return rules.burn_order((voucher_from_row(r) for r in rows), now)


def _ordered_id(prefix: str) -> str:
    """A unique id that sorts by creation time (wall time orders ids only, it means nothing else)."""
    # Random ids put every new hold, allocation and journal key on a random index page; ordered ones
    # append, which cut what each commit writes about threefold (24 KB -> 8 KB per reserve+settle).
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(4)}"


# holds


def reserve(
    conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, amount: int, ttl_s: float, idempotency_key: str,
    key_id: str | None = None,
) -> Hold | InsufficientQuota | AuthenticationError | NotFound:
    """Hold `amount` over vouchers in force in burn order; the refusal is returned for the caller to raise."""
    rules.check_amount(amount, "amount", allow_zero=True)
    rules.check_ttl(ttl_s)
    if key_revoked(conn, key_id):
        return AuthenticationError(BAD_KEY)
    if amount == 0 and conn.execute("SELECT 1 FROM startups WHERE id = ?", (startup_id,)).fetchone() is None:
        return NotFound(f"no startup {startup_id}", param="startup_id")
    row = conn.execute(
        f"SELECT {HOLD_COLUMNS} FROM holds WHERE startup_id = ? AND idempotency_key = ?", (startup_id, idempotency_key)
    ).fetchone()
    if row is not None:
        return dataclasses.replace(_hold_from_row(conn, row), replayed=True)
    release_expired(conn, now, startup_id)
    try:
        allocations = _allocate(conn, now, startup_id, kind, amount)
    except InsufficientQuota as refused:
        return refused  # returned, not raised, so the release of expired holds above is kept
    hold = Hold(
        id=_ordered_id("hold"),
        startup_id=startup_id,
        kind=kind,
        amount=amount,
        allocations=tuple(allocations),
        idempotency_key=idempotency_key,
        created_at=now,
        expires_at=now + ttl_s,
        status=HoldStatus.OPEN,
    )
    conn.execute(
        f"INSERT INTO holds ({HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)",
        (hold.id, startup_id, kind.value, amount, idempotency_key, now, hold.expires_at, _OPEN),
    )
    for voucher_id, part in allocations:
        conn.execute(
            "INSERT INTO hold_allocations (hold_id, voucher_id, amount) VALUES (?, ?, ?)", (hold.id, voucher_id, part)
        )
    return hold


def extend(
    conn: sqlite3.Connection, now: float, hold_id: str, ttl_s: float, add_amount: int
) -> Hold | InsufficientQuota:
    """Push an open hold's expiry to now + ttl_s and hold `add_amount` more; InsufficientQuota is returned."""
    rules.check_ttl(ttl_s)
    rules.check_amount(add_amount, "add_amount", allow_zero=True)
    row = _hold_row(conn, hold_id)
    if row[7] != _OPEN:
        raise Conflict(f"hold {hold_id} is {row[7]}", param="hold_id")
    if row[6] <= now:
        raise Conflict(f"hold {hold_id} has expired", param="hold_id")
    if add_amount:
        release_expired(conn, now, row[1])
        try:
            allocations = _allocate(conn, now, row[1], Kind(row[2]), add_amount)
        except InsufficientQuota as refused:
            # As in reserve: returned, to keep the release of expired holds. The param names extend's argument.
            return InsufficientQuota(refused.message, param="add_amount")
        for voucher_id, part in allocations:
            conn.execute(
                "INSERT INTO hold_allocations (hold_id, voucher_id, amount) VALUES (?, ?, ?)"
                " ON CONFLICT (hold_id, voucher_id) DO UPDATE SET amount = amount + excluded.amount",
                (hold_id, voucher_id, part),
            )
    conn.execute(
        "UPDATE holds SET expires_at = ?, amount = amount + ? WHERE id = ?", (now + ttl_s, add_amount, hold_id)
    )
    return _hold_from_row(conn, _hold_row(conn, hold_id))


def release(conn: sqlite3.Connection, hold_id: str) -> Hold:
    """Free what an open hold still holds; a closed hold is returned unchanged."""
    row = _hold_row(conn, hold_id)
    if row[7] == _OPEN:
        _free_allocations(conn, hold_id)
        conn.execute("UPDATE holds SET status = ? WHERE id = ?", (_RELEASED, hold_id))
        row = _hold_row(conn, hold_id)
    return _hold_from_row(conn, row)


def release_expired(conn: sqlite3.Connection, now: float, startup_id: str | None = None) -> int:
    """Release open holds whose TTL has passed (of one startup, or all); returns how many."""
    if startup_id is None:
        rows = conn.execute("SELECT id FROM holds WHERE status = 'open' AND expires_at <= ?", (now,)).fetchall()
    else:
        rows = conn.execute(
            "SELECT id FROM holds WHERE startup_id = ? AND status = 'open' AND expires_at <= ?", (startup_id, now)
        ).fetchall()
    for (hold_id,) in rows:
        _free_allocations(conn, hold_id)
        conn.execute("UPDATE holds SET status = ? WHERE id = ?", (_RELEASED, hold_id))
    return len(rows)


def get_hold(conn: sqlite3.Connection, hold_id: str) -> Hold | None:
    """The hold, or None."""
    row = conn.execute(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?", (hold_id,)).fetchone()
    return None if row is None else _hold_from_row(conn, row)


def settle(
    conn: sqlite3.Connection,
    now: float,
    hold_id: str,
    actual: int,
    ref: ChargeRef,
    final: bool,
    idempotency_key: str | None,
) -> JournalLine:
    """Debit `actual` through a hold and append the journal line; see `vouchers.ledger`."""
    rules.check_amount(actual, "actual", allow_zero=True)
    if not final and idempotency_key is None:
        raise InvalidRequest("a partial settle needs its own idempotency key", param="idempotency_key")
    (startup_id, kind, status, final_seq), rows = _hold_with_allocations(conn, hold_id)
    if idempotency_key is not None:
        seen = journal_by_key(conn, startup_id, idempotency_key)
        if seen is not None:
            return seen
    if final and status == _SETTLED:
        return journal_by_seq(conn, final_seq)
    breakdown: dict[str, int] = {}
    left = _debit_hold(conn, now, hold_id, rows, actual, breakdown, final) if status == _OPEN else actual
    if left:
        left = _debit_free(conn, now, startup_id, kind, left, breakdown)
    key = idempotency_key if idempotency_key is not None else f"settle:{hold_id}"
    line = JournalLine(
        seq=0,
        at=now,
        startup_id=startup_id,
        kind=kind,
        amount=actual - left,
        overage=left,
        breakdown=tuple(breakdown.items()),
        idempotency_key=key,
        hold_id=hold_id,
        ref=ref,
    )
    line = append_journal(conn, line)
    if final:
        conn.execute(
            "UPDATE holds SET status = ?, settled = settled + ?, final_seq = ? WHERE id = ?",
            (_SETTLED, line.amount, line.seq, hold_id),
        )
    else:
        conn.execute("UPDATE holds SET settled = settled + ? WHERE id = ?", (line.amount, hold_id))
    add_usage(conn, startup_id, kind, line.amount, ref)
    return line


def _hold_with_allocations(conn: sqlite3.Connection, hold_id: str) -> tuple[tuple[str, Kind, str, Any], list[Any]]:
    """One query for the hold (startup, kind, status, final seq) and its allocations (voucher, amount)."""
    rows = conn.execute(
        f"SELECT h.startup_id, h.kind, h.status, h.final_seq, a.amount, {V_TERMS}"
        f" FROM holds h LEFT JOIN hold_allocations a ON a.hold_id = h.id LEFT JOIN vouchers v ON v.id = a.voucher_id"
        f" WHERE h.id = ?",
        (hold_id,),
    ).fetchall()
    if not rows:
        raise NotFound(f"no hold {hold_id}", param="hold_id")
    first = rows[0]
    return (first[0], Kind(first[1]), first[2], first[3]), [r for r in rows if r[5] is not None and r[4] > 0]


def _debit_hold(
    conn: sqlite3.Connection,
    now: float,
    hold_id: str,
    rows: list[Any],
    left: int,
    breakdown: dict[str, int],
    final: bool,
) -> int:
    """Debit from an open hold's allocations on vouchers in force; a final settle frees the rest.

    Returns what is still to debit. One UPDATE per voucher does both the debit and the release.
    """
    parts = sorted(((_Terms._make(r[5:]), r[4]) for r in rows), key=lambda p: rules.burn_key(p[0]))
    taken, left = rules.allocate(((v.id, part if rules.in_force(v, now) else 0) for v, part in parts), left)
    takes = dict(taken)
    voucher_updates: list[tuple[int, int, str]] = []
    allocation_updates: list[tuple[int, str, str]] = []
    for voucher, allocated in parts:
        take = takes.get(voucher.id, 0)
        if take:
            breakdown[voucher.id] = breakdown.get(voucher.id, 0) + take
        freed = allocated if final else take
        if take or freed:
            voucher_updates.append((take, freed, voucher.id))
        if not final and take:
            allocation_updates.append((take, hold_id, voucher.id))
    for update in voucher_updates:
        conn.execute("UPDATE vouchers SET spent = spent + ?, held = held - ? WHERE id = ?", update)
    if final:
        conn.execute("DELETE FROM hold_allocations WHERE hold_id = ?", (hold_id,))
    else:
        conn.executemany(
            "UPDATE hold_allocations SET amount = amount - ? WHERE hold_id = ? AND voucher_id = ?", allocation_updates
        )
    return left


def _hold_row(conn: sqlite3.Connection, hold_id: str) -> Any:
    row = conn.execute(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?", (hold_id,)).fetchone()
    if row is None:
        raise NotFound(f"no hold {hold_id}", param="hold_id")
    return row


def _hold_from_row(conn: sqlite3.Connection, row: Any) -> Hold:
    rows = conn.execute(
        f"SELECT a.amount, {V_TERMS} FROM hold_allocations a JOIN vouchers v ON v.id = a.voucher_id"
        f" WHERE a.hold_id = ? AND a.amount > 0",
        (row[0],),
    ).fetchall()
    parts = sorted(((_Terms._make(r[1:]), r[0]) for r in rows), key=lambda p: rules.burn_key(p[0]))
    return Hold(
        id=row[0],
        startup_id=row[1],
        kind=Kind(row[2]),
        amount=row[3],
        allocations=tuple((v.id, a) for v, a in parts),
        idempotency_key=row[4],
        created_at=row[5],
        expires_at=row[6],
        status=HoldStatus(row[7]),
        settled=row[8],
    )


def _room(conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind) -> list[tuple[str, int]]:
    """(voucher id, free) of the startup's vouchers in force with room left, in burn order."""
    rows = conn.execute(
        f"SELECT {TERMS} FROM vouchers WHERE startup_id = :startup AND kind = :kind AND {NOT_ENDED}"
        f" AND amount - spent - held > 0",
        {"startup": startup_id, "kind": kind.value, "now": now},
    )
    return [(v.id, rules.free(v)) for v in rules.burn_order(map(_Terms._make, rows), now)]


def _allocate(conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, amount: int) -> list[tuple[str, int]]:
    if amount == 0:
        return []  # a hold of 0 takes nothing from any voucher
    allocations, left = rules.allocate(_room(conn, now, startup_id, kind), amount)
    if left:
        available = amount - left
        raise InsufficientQuota(
            f"not enough {kind.value} quota: {amount} requested, {available} available", param="amount"
        )
    conn.executemany("UPDATE vouchers SET held = held + ? WHERE id = ?", [(part, vid) for vid, part in allocations])
    return allocations


def _free_allocations(conn: sqlite3.Connection, hold_id: str) -> None:
    parts = conn.execute("SELECT voucher_id, amount FROM hold_allocations WHERE hold_id = ?", (hold_id,)).fetchall()
    conn.executemany("UPDATE vouchers SET held = held - ? WHERE id = ?", [(a, v) for v, a in parts if a])
    conn.execute("DELETE FROM hold_allocations WHERE hold_id = ?", (hold_id,))


def _debit_free(
    conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, left: int, breakdown: dict[str, int]
) -> int:
    """Debit from free capacity of vouchers in force in burn order; returns what found no voucher."""
    taken, left = rules.allocate(_room(conn, now, startup_id, kind), left)
    conn.executemany("UPDATE vouchers SET spent = spent + ? WHERE id = ?", [(take, vid) for vid, take in taken])
    for voucher_id, take in taken:
        breakdown[voucher_id] = breakdown.get(voucher_id, 0) + take
    return left

"""The ledger rules of `vouchers.store` as plain functions of one SQLite connection.

Each function runs inside a transaction the caller opened with `BEGIN IMMEDIATE` (see
`vouchers.sqlite_runner`), so every check and the debit that depends on it see the same state.
Raising undoes the function's own writes (the runner rolls them back). reserve and extend return
InsufficientQuota instead of raising it, so the release of expired holds they did first is kept.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import orjson

from vouchers.errors import BAD_KEY, AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.models import (
    Balance,
    ChargeRef,
    Hold,
    HoldStatus,
    JournalLine,
    KindBalance,
    UsageTotal,
    Voucher,
)
from vouchers.units import MAX_AMOUNT, Kind

VOUCHER_COLUMNS = (
    "id, startup_id, kind, amount, effective_at, expires_at, priority, note, created_at, voided_at, spent, held"
)
HOLD_COLUMNS = "id, startup_id, kind, amount, idempotency_key, created_at, expires_at, status, settled, final_seq"
JOURNAL_COLUMNS = (
    "seq, at, startup_id, kind, amount, overage, breakdown, idempotency_key, hold_id, reference, model,"
    " prompt_tokens, completion_tokens, gpu_type"
)
BURN_ORDER = "priority, expires_at IS NULL, expires_at, created_at, id"
IN_FORCE = "voided_at IS NULL AND effective_at <= :now AND (expires_at IS NULL OR expires_at > :now)"
# The same, for queries that join vouchers as `v`.
V_BURN_ORDER = "v.priority, v.expires_at IS NULL, v.expires_at, v.created_at, v.id"
V_IN_FORCE = "v.voided_at IS NULL AND v.effective_at <= :now AND (v.expires_at IS NULL OR v.expires_at > :now)"

_OPEN, _SETTLED, _RELEASED = HoldStatus.OPEN.value, HoldStatus.SETTLED.value, HoldStatus.RELEASED.value


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


def check_amount(amount: int, param: str, *, allow_zero: bool = False) -> None:
    """InvalidRequest unless amount is an integer in range (positive unless zero is allowed)."""
    low = 0 if allow_zero else 1
    if isinstance(amount, bool) or not isinstance(amount, int) or not low <= amount <= MAX_AMOUNT:
        raise InvalidRequest(f"{param} must be an integer between {low} and {MAX_AMOUNT}", param=param)


def _ordered_id(prefix: str) -> str:
    """A unique id that sorts by creation time (wall time orders ids only, it means nothing else)."""
    # Random ids put every new hold, allocation and journal key on a random index page; ordered ones
    # append, which cut what each commit writes about threefold (24 KB -> 8 KB per reserve+settle).
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(4)}"


def check_ttl(ttl_s: float) -> None:
    """InvalidRequest unless the TTL is a positive number of seconds."""
    if not ttl_s > 0:
        raise InvalidRequest("ttl_s must be positive", param="ttl_s")


# holds


def key_revoked(conn: sqlite3.Connection, key_id: str | None) -> bool:
    """True when `key_id` is given and names a revoked key."""
    if key_id is None:
        return False
    row = conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return row is not None and row[0] is not None


def reserve(
    conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, amount: int, ttl_s: float, idempotency_key: str,
    key_id: str | None = None,
) -> Hold | InsufficientQuota | AuthenticationError | NotFound:
    """Hold `amount` over vouchers in force in burn order; the refusal is returned for the caller to raise."""
    check_amount(amount, "amount", allow_zero=True)
    check_ttl(ttl_s)
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
    check_ttl(ttl_s)
    check_amount(add_amount, "add_amount", allow_zero=True)
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
    """Debit `actual` through a hold and append the journal line; see `vouchers.store`."""
    check_amount(actual, "actual", allow_zero=True)
    if not final and idempotency_key is None:
        raise InvalidRequest("a partial settle needs its own idempotency key", param="idempotency_key")
    rows = _hold_with_allocations(conn, now, hold_id)
    startup_id, kind, status, final_seq = rows[0][0], Kind(rows[0][1]), rows[0][2], rows[0][3]
    if idempotency_key is not None:
        seen = _journal_by_key(conn, startup_id, idempotency_key)
        if seen is not None:
            return seen
    if final and status == _SETTLED:
        return _journal_by_seq(conn, final_seq)
    breakdown: dict[str, int] = {}
    allocations = [(r[4], r[5], bool(r[6])) for r in rows if r[4] is not None and r[5] > 0]
    left = _debit_hold(conn, hold_id, allocations, actual, breakdown, final) if status == _OPEN else actual
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
    line = _append_journal(conn, line)
    if final:
        conn.execute(
            "UPDATE holds SET status = ?, settled = settled + ?, final_seq = ? WHERE id = ?",
            (_SETTLED, line.amount, line.seq, hold_id),
        )
    else:
        conn.execute("UPDATE holds SET settled = settled + ? WHERE id = ?", (line.amount, hold_id))
    _add_usage(conn, startup_id, kind, line.amount, ref)
    return line


def _hold_with_allocations(conn: sqlite3.Connection, now: float, hold_id: str) -> list[Any]:
    """One query for the hold and its allocations, in burn order, with whether each voucher is in force."""
    rows = conn.execute(
        f"SELECT h.startup_id, h.kind, h.status, h.final_seq, a.voucher_id, a.amount, {V_IN_FORCE}"
        f" FROM holds h LEFT JOIN hold_allocations a ON a.hold_id = h.id LEFT JOIN vouchers v ON v.id = a.voucher_id"
        f" WHERE h.id = :hold ORDER BY {V_BURN_ORDER}",
        {"hold": hold_id, "now": now},
    ).fetchall()
    if not rows:
        raise NotFound(f"no hold {hold_id}", param="hold_id")
    return rows


def _debit_hold(
    conn: sqlite3.Connection,
    hold_id: str,
    allocations: list[tuple[str, int, bool]],
    left: int,
    breakdown: dict[str, int],
    final: bool,
) -> int:
    """Debit from an open hold's allocations on vouchers in force; a final settle frees the rest.

    Returns what is still to debit. One UPDATE per voucher does both the debit and the release.
    """
    voucher_updates: list[tuple[int, int, str]] = []
    allocation_updates: list[tuple[int, str, str]] = []
    for voucher_id, allocated, in_force in allocations:
        take = min(allocated, left) if in_force else 0
        left -= take
        if take:
            breakdown[voucher_id] = breakdown.get(voucher_id, 0) + take
        freed = allocated if final else take
        if take or freed:
            voucher_updates.append((take, freed, voucher_id))
        if not final and take:
            allocation_updates.append((take, hold_id, voucher_id))
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
    allocations = conn.execute(
        f"SELECT a.voucher_id, a.amount FROM hold_allocations a JOIN vouchers v ON v.id = a.voucher_id"
        f" WHERE a.hold_id = ? AND a.amount > 0 ORDER BY {V_BURN_ORDER}",
        (row[0],),
    ).fetchall()
    return Hold(
        id=row[0],
        startup_id=row[1],
        kind=Kind(row[2]),
        amount=row[3],
        allocations=tuple((v, a) for v, a in allocations),
        idempotency_key=row[4],
        created_at=row[5],
        expires_at=row[6],
        status=HoldStatus(row[7]),
        settled=row[8],
    )


def _allocate(conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, amount: int) -> list[tuple[str, int]]:
    if amount == 0:
        return []  # a hold of 0 takes nothing from any voucher
    rows = conn.execute(
        f"SELECT id, amount - spent - held FROM vouchers WHERE startup_id = :startup AND kind = :kind AND {IN_FORCE}"
        f" AND amount - spent - held > 0 ORDER BY {BURN_ORDER}",
        {"startup": startup_id, "kind": kind.value, "now": now},
    ).fetchall()
    allocations: list[tuple[str, int]] = []
    left = amount
    for voucher_id, free in rows:
        take = min(free, left)
        allocations.append((voucher_id, take))
        left -= take
        if not left:
            break
    if left:
        available = amount - left
        raise InsufficientQuota(
            f"not enough {kind.value} quota: {amount} requested, {available} available", param="amount"
        )
    for voucher_id, part in allocations:
        conn.execute("UPDATE vouchers SET held = held + ? WHERE id = ?", (part, voucher_id))
    return allocations


def _free_allocations(conn: sqlite3.Connection, hold_id: str) -> None:
    parts = conn.execute("SELECT voucher_id, amount FROM hold_allocations WHERE hold_id = ?", (hold_id,)).fetchall()
    conn.executemany("UPDATE vouchers SET held = held - ? WHERE id = ?", [(a, v) for v, a in parts if a])
    conn.execute("DELETE FROM hold_allocations WHERE hold_id = ?", (hold_id,))


def _debit_free(
    conn: sqlite3.Connection, now: float, startup_id: str, kind: Kind, left: int, breakdown: dict[str, int]
) -> int:
    """Debit from free capacity of vouchers in force in burn order; returns what found no voucher."""
    rows = conn.execute(
        f"SELECT id, amount - spent - held FROM vouchers WHERE startup_id = :startup AND kind = :kind AND {IN_FORCE}"
        f" AND amount - spent - held > 0 ORDER BY {BURN_ORDER}",
        {"startup": startup_id, "kind": kind.value, "now": now},
    ).fetchall()
    for voucher_id, free in rows:
        if not left:
            break
        take = min(free, left)
        conn.execute("UPDATE vouchers SET spent = spent + ? WHERE id = ?", (take, voucher_id))
        breakdown[voucher_id] = breakdown.get(voucher_id, 0) + take
        left -= take
    return left


# journal and totals


def _append_journal(conn: sqlite3.Connection, line: JournalLine) -> JournalLine:
    """Insert the line and return it with its `seq`."""
    r = line.ref
    cursor = conn.execute(
        "INSERT INTO journal (at, startup_id, kind, amount, overage, breakdown, idempotency_key, hold_id, reference,"
        " model, prompt_tokens, completion_tokens, gpu_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            line.at,
            line.startup_id,
            line.kind.value,
            line.amount,
            line.overage,
            orjson.dumps(line.breakdown).decode(),
            line.idempotency_key,
            line.hold_id,
            r.reference,
            r.model,
            r.prompt_tokens,
            r.completion_tokens,
            r.gpu_type,
        ),
    )
    if cursor.lastrowid is None:
        raise RuntimeError("journal insert returned no row id")
    return dataclasses.replace(line, seq=cursor.lastrowid)


def _add_usage(conn: sqlite3.Connection, startup_id: str, kind: Kind, amount: int, ref: ChargeRef) -> None:
    label = (ref.model if kind is Kind.MODEL else ref.gpu_type) or ""
    conn.execute(
        "INSERT INTO usage_totals (startup_id, kind, label, amount, prompt_tokens, completion_tokens)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (startup_id, kind, label) DO UPDATE SET"
        " amount = amount + excluded.amount, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
        " completion_tokens = completion_tokens + excluded.completion_tokens",
        (startup_id, kind.value, label, amount, ref.prompt_tokens, ref.completion_tokens),
    )


def _journal_line(row: Any) -> JournalLine:
    return JournalLine(
        seq=row[0],
        at=row[1],
        startup_id=row[2],
        kind=Kind(row[3]),
        amount=row[4],
        overage=row[5],
        breakdown=tuple((v, a) for v, a in orjson.loads(row[6])),
        idempotency_key=row[7],
        hold_id=row[8],
        ref=ChargeRef(
            reference=row[9], model=row[10], prompt_tokens=row[11], completion_tokens=row[12], gpu_type=row[13]
        ),
    )


def _journal_by_key(conn: sqlite3.Connection, startup_id: str, key: str) -> JournalLine | None:
    row = conn.execute(
        f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE startup_id = ? AND idempotency_key = ?", (startup_id, key)
    ).fetchone()
    return None if row is None else _journal_line(row)


def _journal_by_seq(conn: sqlite3.Connection, seq: int) -> JournalLine:
    row = conn.execute(f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        raise RuntimeError(f"journal line {seq} of a settled hold is missing")
    return _journal_line(row)


def journal(
    conn: sqlite3.Connection, startup_id: str | None, since: float | None, until: float | None, limit: int | None
) -> list[JournalLine]:
    """Journal lines oldest first; `since` inclusive, `until` exclusive."""
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (("startup_id = ?", startup_id), ("at >= ?", since), ("at < ?", until)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {JOURNAL_COLUMNS} FROM journal{where} ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(limit, 0))
    return [_journal_line(row) for row in conn.execute(sql, params)]


def usage_totals(conn: sqlite3.Connection) -> list[UsageTotal]:
    """Running debit totals per startup, kind and label."""
    rows = conn.execute(
        "SELECT startup_id, kind, label, amount, prompt_tokens, completion_tokens FROM usage_totals"
        " ORDER BY startup_id, kind, label"
    )
    return [UsageTotal(r[0], Kind(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def balance(conn: sqlite3.Connection, now: float, startup_id: str) -> Balance:
    """Granted, spent, held and remaining per kind over the vouchers in force."""
    if conn.execute("SELECT 1 FROM startups WHERE id = ?", (startup_id,)).fetchone() is None:
        raise NotFound(f"no startup {startup_id}", param="startup_id")
    rows = conn.execute(
        f"SELECT {VOUCHER_COLUMNS} FROM vouchers WHERE startup_id = :startup AND {IN_FORCE} ORDER BY {BURN_ORDER}",
        {"startup": startup_id, "now": now},
    ).fetchall()
    vouchers = [voucher_from_row(r) for r in rows]
    return Balance(
        startup_id=startup_id,
        model=_kind_balance(v for v in vouchers if v.kind is Kind.MODEL),
        compute=_kind_balance(v for v in vouchers if v.kind is Kind.COMPUTE),
        vouchers=tuple(vouchers),
    )


def _kind_balance(vouchers: Iterable[Voucher]) -> KindBalance:
    granted = spent = held = 0
    for v in vouchers:
        granted += v.amount
        spent += v.spent
        held += v.held
    return KindBalance(granted=granted, spent=spent, held=held, remaining=granted - spent - held)

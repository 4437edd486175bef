"""The journal of the SQLite ledger: its lines and running totals, written by `vouchers.sqlite_holds`
inside the settle's transaction and read here. Rules: `vouchers.journal`."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import orjson

from vouchers.models import ChargeRef, JournalLine, UsageTotal
from vouchers.sqlite_runner import SqliteRunner
from vouchers.units import Kind

JOURNAL_COLUMNS = (
    "seq, at, startup_id, kind, amount, overage, breakdown, idempotency_key, hold_id, reference, model,"
    " prompt_tokens, completion_tokens, gpu_type"
)


class SqliteJournal:
    """The `Journal` protocol on SQLite."""

    def __init__(self, runner: SqliteRunner) -> None:
        self._runner = runner

    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first); `since` inclusive, `until` exclusive."""
        return await self._runner.run(lambda conn: read_journal(conn, startup_id, since, until, limit), write=False)

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        return await self._runner.run(read_usage_totals, write=False)


def append_journal(conn: sqlite3.Connection, line: JournalLine) -> JournalLine:
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


def add_usage(conn: sqlite3.Connection, startup_id: str, kind: Kind, amount: int, ref: ChargeRef) -> None:
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


def journal_by_key(conn: sqlite3.Connection, startup_id: str, key: str) -> JournalLine | None:
    row = conn.execute(
        f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE startup_id = ? AND idempotency_key = ?", (startup_id, key)
    ).fetchone()
    return None if row is None else _journal_line(row)


def journal_by_seq(conn: sqlite3.Connection, seq: int) -> JournalLine:
    row = conn.execute(f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        raise RuntimeError(f"journal line {seq} of a settled hold is missing")
    return _journal_line(row)


def read_journal(
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


def read_usage_totals(conn: sqlite3.Connection) -> list[UsageTotal]:
    """Running debit totals per startup, kind and label."""
    rows = conn.execute(
        "SELECT startup_id, kind, label, amount, prompt_tokens, completion_tokens FROM usage_totals"
        " ORDER BY startup_id, kind, label"
    )
    return [UsageTotal(r[0], Kind(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

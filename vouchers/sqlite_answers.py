"""Kept answers on SQLite (`vouchers.answers`)."""

from __future__ import annotations

import sqlite3

from vouchers import rules
from vouchers.clock import Clock
from vouchers.errors import InvalidRequest
from vouchers.sqlite_runner import SqliteRunner


class SqliteAnswers:
    """The `AnswerCache` protocol on SQLite."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer (UTF-8 text, such as JSON) under its idempotency key for `ttl_s`, and
        drop answers past theirs; False (nothing kept) past the startup's `budget_bytes`."""
        rules.check_ttl(ttl_s)
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
        now = self._clock.now()
        row = await self._runner.run(
            lambda conn: conn.execute("SELECT body FROM answers WHERE startup_id = ? AND key = ? AND expires_at > ?",
                                      (startup_id, key, now)).fetchone(), write=False)
        return None if row is None else bytes(row[0])

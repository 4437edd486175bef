"""Rate windows on SQLite (`vouchers.rates`): the key check, the count and the decision in one transaction."""

from __future__ import annotations

import sqlite3

from vouchers import rules
from vouchers.clock import Clock
from vouchers.errors import BAD_KEY, AuthenticationError
from vouchers.models import Limits, RateDecision
from vouchers.sqlite_directory import key_revoked
from vouchers.sqlite_runner import SqliteRunner


class SqliteRates:
    """The `RateLimiter` protocol on SQLite."""

    def __init__(self, runner: SqliteRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    async def rate_limit(self, startup_id: str, limits: Limits, *, requests: int, tokens: int,
                         key_id: str | None = None) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed."""
        outcome = await self._runner.run(
            lambda conn: AuthenticationError(BAD_KEY) if key_revoked(conn, key_id)
            else _count(conn, self._clock.now(), startup_id, limits, requests, tokens), write=True
        )
        if isinstance(outcome, AuthenticationError):
            raise outcome
        return outcome


def _count(
    conn: sqlite3.Connection, now: float, startup_id: str, limits: Limits, requests: int, tokens: int
) -> RateDecision:
    window, reset_s = rules.rate_window(now)
    if limits.rpm is None and limits.tpm is None:
        return rules.rate_decision(limits, True, 0, 0, reset_s)
    conn.execute("DELETE FROM rate_windows WHERE startup_id = ? AND window_start < ?", (startup_id, window))
    row = conn.execute(
        "SELECT requests, tokens FROM rate_windows WHERE startup_id = ? AND window_start = ?", (startup_id, window)
    ).fetchone()
    used_requests, used_tokens = row if row is not None else (0, 0)
    allowed = rules.rate_allows(limits, used_requests, used_tokens, requests, tokens)
    if allowed:
        used_requests += requests
        used_tokens += tokens
        conn.execute(
            "INSERT INTO rate_windows (startup_id, window_start, requests, tokens) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (startup_id, window_start) DO UPDATE SET requests = excluded.requests,"
            " tokens = excluded.tokens",
            (startup_id, window, used_requests, used_tokens),
        )
    return rules.rate_decision(limits, allowed, used_requests, used_tokens, reset_s)

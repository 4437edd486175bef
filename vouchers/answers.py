"""Kept answers: what a request with an idempotency key was answered, to send again to its retries.

Rules: an answer is UTF-8 text kept per startup and key for its TTL (the store's clock decides when it
is up); keeping one under a key replaces the one before; with a budget, nothing new is kept once the
startup's answers still kept would pass it.
"""

from __future__ import annotations

from typing import Protocol


class AnswerCache(Protocol):
    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer under its idempotency key for `ttl_s`, to send again to a retry.

        With `budget_bytes`, nothing is kept (False) when the startup's answers still kept, plus this one
        (in place of any under the same key), would pass that many bytes.
        """
        ...

    async def kept_answer(self, startup_id: str, key: str) -> bytes | None:
        """The answer kept under this key, or None (never kept, or its time is up)."""
        ...

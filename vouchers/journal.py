"""The journal: the append-only lines every debit writes, and the running totals kept beside them.

Rules: a line is never changed or removed; `seq` grows with every line across startups; the sum of a
startup's line amounts equals what its vouchers have spent; the usage totals add up the same lines per
startup, kind and model (model vouchers) or GPU type (compute vouchers). Lines are written by the
ledger (`vouchers.ledger`) in the same atomic step as the debit; this protocol only reads them.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import JournalLine, UsageTotal


class Journal(Protocol):
    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first), optionally for one startup and time range.

        `since` is inclusive, `until` exclusive; `limit` keeps the oldest lines.
        """
        ...

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        ...

"""The journal on Redis (`vouchers.journal`): lines written by the settle script, read here."""

from __future__ import annotations

from typing import Any

from vouchers.models import JournalLine, UsageTotal
from vouchers.redis_codec import USAGE_SEP, line_from, time_text
from vouchers.redis_keys import RedisKeys
from vouchers.units import Kind


class RedisJournal:
    """The `Journal` protocol on Redis."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self._r = client
        self._keys = keys

    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first); `since` inclusive, `until` exclusive."""
        startups = [startup_id] if startup_id is not None else await self._r.hkeys(self._keys.startups)
        low = "-inf" if since is None else time_text(since)
        high = "+inf" if until is None else f"({time_text(until)}"
        async with self._r.pipeline(transaction=False) as pipe:
            for s in startups:
                pipe.zrangebyscore(self._keys.startup_journal(s), low, high)
            seqs = sorted(int(seq) for found in await pipe.execute() for seq in found)
        if limit is not None:
            seqs = seqs[: max(limit, 0)]
        if not seqs:
            return []
        lines = await self._r.hmget(self._keys.journal_lines, seqs)
        return [line_from(text) for text in lines if text is not None]

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        totals: dict[tuple[str, str, str], dict[str, int]] = {}
        for field, value in (await self._r.hgetall(self._keys.usage)).items():
            startup_id, kind, label, name = field.split(USAGE_SEP)
            totals.setdefault((startup_id, kind, label), {})[name] = int(value)
        return [
            UsageTotal(
                s, Kind(kind), label, tot.get("amount", 0), tot.get("prompt_tokens", 0), tot.get("completion_tokens", 0)
            )
            for (s, kind, label), tot in sorted(totals.items())
        ]

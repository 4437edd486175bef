"""Kept answers on Redis (`vouchers.answers`): the budget kept by one script, expiry by the store's clock."""

from __future__ import annotations

from typing import Any

from vouchers import rules
from vouchers.clock import Clock
from vouchers.errors import InvalidRequest
from vouchers.redis_codec import time_text
from vouchers.redis_keys import RedisKeys
from vouchers.redis_scripts import ScriptRunner


class RedisAnswers:
    """The `AnswerCache` protocol on Redis."""

    def __init__(self, client: Any, keys: RedisKeys, clock: Clock, scripts: ScriptRunner) -> None:
        # decode_responses=True makes every reply str; redis-py's stubs cannot express that, hence Any.
        self._r = client
        self._keys = keys
        self._clock = clock
        self._scripts = scripts

    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer (UTF-8 text, such as JSON) under its idempotency key; Redis drops it
        after `ttl_s`. False (nothing kept) past the startup's `budget_bytes`: the script keeps a running
        total of the startup's kept bytes, less the answers whose time is up."""
        rules.check_ttl(ttl_s)
        try:
            text = answer.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest("an answer to keep must be UTF-8 text", param="answer") from exc
        # The store's clock decides when it is up, as for holds; Redis's own expiry only clears it away.
        now = self._clock.now()
        k = self._keys
        kept = await self._scripts.run(
            "keep_answer",
            [k.answer(startup_id, key), k.answers_index(startup_id), k.answers_sizes(startup_id),
             k.answers_bytes(startup_id)],
            [time_text(now), time_text(now + ttl_s), str(max(1, round(ttl_s * 1000))),
             f"{now + ttl_s!r}|{text}", str(len(answer)), "" if budget_bytes is None else str(budget_bytes), key],
        )
        return bool(kept)

    async def kept_answer(self, startup_id: str, key: str) -> bytes | None:
        """The answer kept under this key, or None."""
        record = await self._r.get(self._keys.answer(startup_id, key))
        if record is None:
            return None
        expires_at, _, text = str(record).partition("|")
        return text.encode() if self._clock.now() < float(expires_at) else None

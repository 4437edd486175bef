"""Rate windows on Redis (`vouchers.rates`): the key check and the count in one script (`lua/rate_limit.lua`,
the atomic copy of `vouchers.rules.rate_allows`)."""

from __future__ import annotations

from vouchers import rules
from vouchers.clock import Clock
from vouchers.errors import BAD_KEY, AuthenticationError
from vouchers.models import Limits, RateDecision
from vouchers.redis_keys import RedisKeys
from vouchers.redis_scripts import ScriptRunner


class RedisRates:
    """The `RateLimiter` protocol on Redis."""

    def __init__(self, keys: RedisKeys, clock: Clock, scripts: ScriptRunner) -> None:
        self._keys = keys
        self._clock = clock
        self._scripts = scripts

    async def rate_limit(
        self, startup_id: str, limits: Limits, *, requests: int, tokens: int, key_id: str | None = None
    ) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed."""
        now = self._clock.now()
        window, reset_s = rules.rate_window(now)
        if limits.rpm is None and limits.tpm is None:
            return rules.rate_decision(limits, True, 0, 0, reset_s)
        reply = await self._scripts.run(
            "rate_limit",
            [self._keys.rate_window(startup_id, window), self._keys.keys_revoked],
            [
                "" if limits.rpm is None else str(limits.rpm),
                "" if limits.tpm is None else str(limits.tpm),
                str(requests),
                str(tokens),
                str(2 * rules.RATE_WINDOW_S * 1000),
                key_id or "",
            ],
        )
        if reply[0] == "revoked":
            raise AuthenticationError(BAD_KEY)
        allowed, counted_r, counted_t = reply
        return rules.rate_decision(limits, bool(int(allowed)), int(counted_r), int(counted_t), reset_s)

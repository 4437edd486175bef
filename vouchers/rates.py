"""The rate limiter: requests and tokens counted per startup in windows every replica shares.

Rules (`vouchers.rules`): fixed windows of one minute named by the store's clock; a request counts only
if both limits still allow it, and a refused one counts nothing; the answer says what is left and when
the window ends. With a key id, a revoked key counts nothing and is refused in the same atomic step.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import Limits, RateDecision


class RateLimiter(Protocol):
    async def rate_limit(
        self, startup_id: str, limits: Limits, *, requests: int, tokens: int, key_id: str | None = None
    ) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed.

        With `key_id`, a revoked key counts nothing and raises AuthenticationError (as in `Ledger.reserve`).
        """
        ...

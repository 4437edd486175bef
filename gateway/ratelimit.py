"""Rate limits per startup: the store counts, this module turns its decision into OpenAI's headers."""

from __future__ import annotations

import math

from gateway.errors import RateLimited
from vouchers.models import Limits, RateDecision
from vouchers.rates import RateLimiter


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def headers(decision: RateDecision) -> dict[str, str]:
    """The x-ratelimit-* headers for a decision, only for the limits that are set."""
    out: dict[str, str] = {}
    reset = _duration(decision.reset_s)
    if decision.limit_requests is not None:
        out["x-ratelimit-limit-requests"] = str(decision.limit_requests)
        out["x-ratelimit-remaining-requests"] = str(max(decision.remaining_requests or 0, 0))
        out["x-ratelimit-reset-requests"] = reset
    if decision.limit_tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(decision.limit_tokens)
        out["x-ratelimit-remaining-tokens"] = str(max(decision.remaining_tokens or 0, 0))
        out["x-ratelimit-reset-tokens"] = reset
    return out


async def check(store: RateLimiter, startup_id: str, limits: Limits, *, tokens: int, key_id: str | None = None
                ) -> dict[str, str]:
    """Count one request of `tokens` against the startup's limits; RateLimited (429) when over.

    No limits set: nothing is counted and the answer is empty. `key_id` as in `Store.rate_limit`.
    """
    if limits.rpm is None and limits.tpm is None:
        return {}
    decision = await store.rate_limit(startup_id, limits, requests=1, tokens=tokens, key_id=key_id)
    out = headers(decision)
    if not decision.allowed:
        retry = max(decision.retry_after_s, 0.001)
        out["retry-after"] = str(max(math.ceil(retry), 1))
        out["retry-after-ms"] = str(math.ceil(retry * 1000))
        which = "tokens" if limits.tpm is not None and tokens > (decision.remaining_tokens or 0) else "requests"
        raise RateLimited(
            f"Rate limit reached for {which} per minute; try again in {_duration(retry)}.", headers=out
        )
    return out

"""Prices and rate limits, cached for a moment so a request does not pay a store round trip for each."""

from __future__ import annotations

import time

from vouchers.catalog import Catalog
from vouchers.models import Limits, Price


class Lookups:
    """Per-replica cache; an admin change on this replica applies at once, on others within `ttl_s`."""

    def __init__(self, store: Catalog, *, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._prices: dict[str, tuple[float, Price | None]] = {}
        self._limits: dict[str, tuple[float, Limits]] = {}

    async def price(self, model: str) -> Price | None:
        """The model's price, None when it has none (it then costs nothing)."""
        hit = self._prices.get(model)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        price = await self._store.get_price(model)
        self._prices[model] = (now, price)
        return price

    async def limits(self, startup_id: str) -> Limits:
        """The startup's requests and tokens per minute (None: no limit)."""
        hit = self._limits.get(startup_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        limits = await self._store.get_limits(startup_id)
        self._limits[startup_id] = (now, limits)
        return limits

    def forget_price(self, model: str) -> None:
        self._prices.pop(model, None)

    def forget_limits(self, startup_id: str) -> None:
        self._limits.pop(startup_id, None)

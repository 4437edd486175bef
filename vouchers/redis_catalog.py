"""Prices and limits on Redis (`vouchers.catalog`)."""

from __future__ import annotations

import json
from typing import Any

from vouchers.models import Limits, Price
from vouchers.redis_directory import require_startup
from vouchers.redis_keys import RedisKeys


class RedisCatalog:
    """The `Catalog` protocol on Redis."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self._r = client
        self._keys = keys

    async def set_price(self, price: Price) -> Price:
        """Set a model's price."""
        await self._r.hset(self._keys.prices, price.model, json.dumps(price.__dict__))
        return price

    async def get_price(self, model: str) -> Price | None:
        """A model's price, or None."""
        record = await self._r.hget(self._keys.prices, model)
        return None if record is None else Price(**json.loads(record))

    async def list_prices(self) -> list[Price]:
        """Every price, by model."""
        records = await self._r.hgetall(self._keys.prices)
        return [Price(**json.loads(records[m])) for m in sorted(records)]

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits:
        """Set a startup's rate limits; NotFound if the startup does not exist."""
        await require_startup(self._r, self._keys, startup_id)
        await self._r.hset(self._keys.limits, startup_id, json.dumps(limits.__dict__))
        return limits

    async def get_limits(self, startup_id: str) -> Limits:
        """A startup's rate limits (none unless set)."""
        record = await self._r.hget(self._keys.limits, startup_id)
        return Limits() if record is None else Limits(**json.loads(record))

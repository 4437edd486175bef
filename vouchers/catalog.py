"""The catalog: what each model costs and what each startup may use per minute.

Rules: a price is per model, in micro-credits per million prompt and completion tokens, and the last one
set wins; a startup's limits (requests and tokens per minute, None for no limit) exist only for an
existing startup and are none until set. Counting against the limits is `vouchers.rates`.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import Limits, Price


class Catalog(Protocol):
    async def set_price(self, price: Price) -> Price:
        """Set (or replace) a model's price."""
        ...

    async def get_price(self, model: str) -> Price | None:
        """A model's price, or None."""
        ...

    async def list_prices(self) -> list[Price]:
        """Every price, by model name."""
        ...

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits:
        """Set a startup's rate limits (None: no limit); NotFound if the startup does not exist."""
        ...

    async def get_limits(self, startup_id: str) -> Limits:
        """A startup's rate limits; none by default."""
        ...

"""Prices and limits on SQLite (`vouchers.catalog`)."""

from __future__ import annotations

import sqlite3

from vouchers.models import Limits, Price
from vouchers.sqlite_directory import require_startup
from vouchers.sqlite_runner import SqliteRunner


class SqliteCatalog:
    """The `Catalog` protocol on SQLite."""

    def __init__(self, runner: SqliteRunner) -> None:
        self._runner = runner

    async def set_price(self, price: Price) -> Price:
        """Set (or replace) a model's price."""

        def op(conn: sqlite3.Connection) -> Price:
            conn.execute(
                "INSERT INTO prices (model, input_per_1m, output_per_1m) VALUES (?, ?, ?) ON CONFLICT (model)"
                " DO UPDATE SET input_per_1m = excluded.input_per_1m, output_per_1m = excluded.output_per_1m",
                (price.model, price.input_per_1m, price.output_per_1m),
            )
            return price

        return await self._runner.run(op, write=True)

    async def get_price(self, model: str) -> Price | None:
        """A model's price, or None."""
        row = await self._runner.run(
            lambda conn: conn.execute("SELECT model, input_per_1m, output_per_1m FROM prices WHERE model = ?",
                                      (model,)).fetchone(), write=False)
        return None if row is None else Price(*row)

    async def list_prices(self) -> list[Price]:
        """Every price, by model name."""
        rows = await self._runner.run(
            lambda conn: conn.execute("SELECT model, input_per_1m, output_per_1m FROM prices ORDER BY model")
            .fetchall(), write=False)
        return [Price(*row) for row in rows]

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits:
        """Set a startup's rate limits (None: no limit); NotFound if the startup does not exist."""

        def op(conn: sqlite3.Connection) -> Limits:
            require_startup(conn, startup_id)
            conn.execute(
                "INSERT INTO limits (startup_id, rpm, tpm, max_gpus, max_queued_jobs) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (startup_id) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm,"
                " max_gpus = excluded.max_gpus, max_queued_jobs = excluded.max_queued_jobs",
                (startup_id, limits.rpm, limits.tpm, limits.max_gpus, limits.max_queued_jobs),
            )
            return limits

        return await self._runner.run(op, write=True)

    async def get_limits(self, startup_id: str) -> Limits:
        """A startup's rate limits; none by default."""
        row = await self._runner.run(
            lambda conn: conn.execute("SELECT rpm, tpm, max_gpus, max_queued_jobs FROM limits WHERE startup_id = ?",
                                      (startup_id,)).fetchone(),
            write=False)
        return Limits() if row is None else Limits(*row)

"""Group commit on the SQLite thread: operations batched together still succeed or fail alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from vouchers.clock import ManualClock
from vouchers.errors import Conflict
from vouchers.factory import open_stores
from vouchers.sqlite_runner import SqliteRunner


def _write_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO prices (model, input_per_1m, output_per_1m) VALUES ('broken', 1, 1)")
    raise Conflict("fails after writing")


def _write(model: str) -> Callable[[sqlite3.Connection], str]:
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO prices (model, input_per_1m, output_per_1m) VALUES (?, 1, 1)", (model,))
        return model

    return op


async def test_a_failing_operation_undoes_only_itself(tmp_path: Path) -> None:
    runner = SqliteRunner(tmp_path / "ledger.db")
    await runner.start()
    gate = threading.Event()
    try:
        # Hold the thread on a first operation so the next three are queued and taken as one batch.
        blocker = asyncio.ensure_future(runner.run(lambda c: gate.wait(30), write=False))
        batch = asyncio.gather(
            runner.run(_write("before"), write=True),
            runner.run(_write_then_fail, write=True),
            runner.run(_write("after"), write=True),
            return_exceptions=True,
        )
        await asyncio.sleep(0)  # let the three tasks queue their operations
        gate.set()
        assert await blocker
        results = await batch
        assert results[0] == "before" and results[2] == "after"
        assert isinstance(results[1], Conflict)
        rows = await runner.run(lambda c: c.execute("SELECT model FROM prices ORDER BY model").fetchall(), write=False)
        assert rows == [("after",), ("before",)]
    finally:
        await runner.close()


async def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    clock = ManualClock()
    url = f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}"
    first = await open_stores(url, data_dir=tmp_path, clock=clock)
    second = await open_stores(url, data_dir=tmp_path, clock=clock)
    try:
        await first.directory.create_startup("acme", "Acme")
        assert (await second.directory.get_startup("acme")) is not None
        with sqlite3.connect(tmp_path / "sub" / "ledger.db") as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)
    finally:
        await first.close()
        await second.close()


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = await open_stores("sqlite", data_dir=tmp_path, clock=ManualClock())
    await store.close()
    await store.close()  # closing twice is harmless
    with pytest.raises(RuntimeError):
        await store.directory.list_startups()

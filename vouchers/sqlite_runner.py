"""One thread owning one SQLite connection, with group commit for operations that arrive together.

The event loop never touches SQLite: it queues a plain function and awaits a future. The thread takes
every operation waiting in the queue, runs them in one `BEGIN IMMEDIATE` transaction and commits once.
An operation that raises must undo only itself: if it had already changed rows, the batch is rolled
back and run again with a SAVEPOINT around each operation. Results are handed back only after the
commit, so a caller never sees an outcome that could still be lost to a rollback.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vouchers.schema import PRAGMAS, SchemaError, migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

# Bounds how long one batch keeps the write lock from other processes.
MAX_BATCH = 256


@dataclass
class _Item:
    fn: Op
    future: asyncio.Future[Any]
    write: bool


@dataclass
class _Outcome:
    item: _Item
    value: Any = None
    error: BaseException | None = None


class _Stop:
    """Queued by close(): the thread finishes what came before it, then exits."""


class SqliteRunner:
    """Runs functions of a connection on a dedicated thread; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[_Item | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the connection, start the thread and bring the schema up to date (`vouchers.schema.migrate`);
        SchemaError, with the thread stopped, for a ledger newer than this code."""
        conn = await asyncio.to_thread(_connect, self._path)
        self._thread = threading.Thread(target=self._main, args=(conn,), name=f"sqlite:{self._path.name}", daemon=True)
        self._thread.start()
        try:
            await self.run(migrate, write=True)
        except SchemaError as exc:
            await self.close()
            raise SchemaError(f"{self._path}: {exc}") from None

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `fn(connection)` inside a transaction on the store thread and return its result."""
        if self._closed:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Item(fn, future, write))
        return await future

    async def close(self) -> None:
        """Finish queued work, close the connection and stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)

    def _main(self, conn: sqlite3.Connection) -> None:
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                batch.append(nxt)
            _deliver_all(_run_batch(conn, batch))
            if stop:
                return


def _run_batch(conn: sqlite3.Connection, batch: list[_Item]) -> list[_Outcome]:
    write = any(item.write for item in batch)
    try:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        outcomes = _run_fast(conn, batch)
        if outcomes is None:
            # An operation failed after writing: start over with a SAVEPOINT around each one.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            outcomes = [_run_isolated(conn, item) for item in batch]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        log.warning("transaction failed, %d operations rolled back: %s", len(batch), exc)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [_Outcome(item, error=exc) for item in batch]
    return outcomes


def _run_fast(conn: sqlite3.Connection, batch: list[_Item]) -> list[_Outcome] | None:
    """Run the batch without savepoints; None if an operation raised after changing rows.

    Most failures (not enough quota, unknown ids, bad input) are found before the first write, and
    skipping two savepoint statements per operation is a large share of the cost of a reserve.
    """
    outcomes: list[_Outcome] = []
    for item in batch:
        before = conn.total_changes
        try:
            outcomes.append(_Outcome(item, value=item.fn(conn)))
        except Exception as exc:  # handed to the awaiting caller, who raises it
            if conn.total_changes != before:
                return None
            outcomes.append(_Outcome(item, error=exc))
    return outcomes


def _run_isolated(conn: sqlite3.Connection, item: _Item) -> _Outcome:
    conn.execute("SAVEPOINT op")
    try:
        value = item.fn(conn)
    except Exception as exc:  # undo this operation only; the caller raises it
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return _Outcome(item, error=exc)
    conn.execute("RELEASE op")
    return _Outcome(item, value=value)


def _deliver_all(outcomes: list[_Outcome]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome.item.future.get_loop(), []).append(outcome)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, group)
        except RuntimeError:
            log.warning("event loop closed before %d results could be delivered", len(group))


def _deliver(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        future = outcome.item.future
        if future.cancelled():
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly, always BEGIN IMMEDIATE for writes, so the
    # write lock is taken before any read that a check-and-debit depends on.
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn

"""SQLite schema versions: an older ledger is migrated when opened, a newer one is refused."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from vouchers.clock import ManualClock
from vouchers.factory import open_stores
from vouchers.schema import MIGRATIONS, SCHEMA_VERSION, Migration, SchemaError, migrate, schema_version
from vouchers.units import Kind

DATA = Path(__file__).parent / "data"


def _version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return schema_version(conn)


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    """A copy of a ledger written by the code before schema versions (tests/vouchers/data/README.md)."""
    path = tmp_path / "ledger.db"
    shutil.copy(DATA / "ledger-v0.db", path)
    assert _version(path) == 0
    return path


async def test_a_ledger_made_before_versions_is_migrated_and_keeps_its_figures(old_ledger: Path) -> None:
    stores = await open_stores(f"sqlite:///{old_ledger}", data_dir=old_ledger.parent,
                               clock=ManualClock(1_800_000_100.0))
    try:
        assert _version(old_ledger) == SCHEMA_VERSION
        balance = await stores.ledger.balance("acme")
        # 10 credits granted; 1.25 settled; 0.5 still held by the open hold it was written with.
        assert (balance.model.granted, balance.model.spent, balance.model.held) == (10_000_000, 1_250_000, 500_000)
        assert balance.compute.granted == 3_600_000
        [line] = await stores.journal.journal("acme")
        assert (line.amount, line.ref.model, line.ref.completion_tokens) == (1_250_000, "smollm2-135m", 20)
        key = await stores.directory.key_by_hash("ab" * 32)
        assert key is not None and key.startup_id == "acme" and key.active
        price = await stores.catalog.get_price("smollm2-135m")
        assert price is not None and price.output_per_1m == 1_500_000
        assert (await stores.catalog.get_limits("acme")).rpm == 60
        hold = await stores.ledger.reserve("acme", Kind.MODEL, 1_000_000, ttl_s=60, idempotency_key="after")
        assert hold.amount == 1_000_000  # and it still takes new work
    finally:
        await stores.close()


async def test_a_new_ledger_starts_at_the_current_version(tmp_path: Path) -> None:
    stores = await open_stores("sqlite", data_dir=tmp_path, clock=ManualClock())
    await stores.close()
    assert _version(tmp_path / "ledger.db") == SCHEMA_VERSION


async def test_a_ledger_from_a_later_release_is_refused_untouched(old_ledger: Path) -> None:
    with closing(sqlite3.connect(old_ledger)) as conn, conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match=rf"version {SCHEMA_VERSION + 1}, newer than this shuqi knows") as info:
        await open_stores(f"sqlite:///{old_ledger}", data_dir=old_ledger.parent, clock=ManualClock())
    assert str(old_ledger) in str(info.value) and "upgrade shuqi" in str(info.value)
    assert _version(old_ledger) == SCHEMA_VERSION + 1
    with closing(sqlite3.connect(old_ledger)) as conn, conn:
        assert conn.execute("SELECT COUNT(*) FROM journal").fetchone() == (1,)


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_an_appended_migration_runs_once_on_a_ledger_at_the_previous_version(tmp_path: Path) -> None:
    # What the next schema change looks like: one more entry, applied to ledgers that already exist.
    nxt = Migration(SCHEMA_VERSION + 1, "a table for the test", ("CREATE TABLE extra (id TEXT PRIMARY KEY)",))
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        assert migrate(conn) == SCHEMA_VERSION
        conn.execute("INSERT INTO startups (id, name, created_at) VALUES ('acme', 'Acme', 0)")
        assert migrate(conn, (*MIGRATIONS, nxt)) == SCHEMA_VERSION + 1
        assert migrate(conn, (*MIGRATIONS, nxt)) == SCHEMA_VERSION + 1  # not again: CREATE TABLE would fail
        assert conn.execute("SELECT COUNT(*) FROM extra").fetchone() == (0,)
        assert conn.execute("SELECT id FROM startups").fetchall() == [("acme",)]
    finally:
        conn.close()

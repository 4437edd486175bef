"""Every SQL table of the SQLite store, declared in one place, and the ordered migrations that build them.

Amounts are INTEGER in the smallest unit; times are REAL seconds since the epoch. Idempotency keys
are unique per startup, so two startups may use the same key without colliding.

A ledger file records the last migration applied in `PRAGMA user_version` (0: none, or a ledger made
before versions existed, whose tables migration 1 finds already there). Opening a ledger applies the
migrations it lacks, in order, in one write transaction (`migrate`); a ledger whose version is newer
than `SCHEMA_VERSION` is refused, never opened by code that does not know its tables. A schema change is
one more entry at the end of `MIGRATIONS`, never an edit of an entry already released.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


class SchemaError(RuntimeError):
    """A ledger this code cannot open: its schema is newer than this version of shuqi knows."""


@dataclass(frozen=True)
class Migration:
    version: int  # the user_version once applied: its position in MIGRATIONS, from 1
    note: str
    statements: tuple[str, ...]


_LEDGER_V1: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS startups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        startup_id TEXT NOT NULL REFERENCES startups(id),
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS api_keys_startup ON api_keys(startup_id)",
    """CREATE TABLE IF NOT EXISTS vouchers (
        id TEXT PRIMARY KEY,
        startup_id TEXT NOT NULL REFERENCES startups(id),
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount > 0),
        effective_at REAL NOT NULL,
        expires_at REAL,
        priority INTEGER NOT NULL,
        note TEXT NOT NULL,
        created_at REAL NOT NULL,
        voided_at REAL,
        spent INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        CHECK (spent >= 0 AND held >= 0 AND spent + held <= amount)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS vouchers_startup_kind ON vouchers(startup_id, kind)",
    """CREATE TABLE IF NOT EXISTS holds (
        id TEXT PRIMARY KEY,
        startup_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        status TEXT NOT NULL,
        settled INTEGER NOT NULL DEFAULT 0,
        final_seq INTEGER,
        UNIQUE (startup_id, idempotency_key)
    ) WITHOUT ROWID""",
    # Only open holds are ever looked up by expiry (reserve, per startup; the reaper scans it whole).
    "CREATE INDEX IF NOT EXISTS holds_open ON holds(startup_id, expires_at) WHERE status = 'open'",
    """CREATE TABLE IF NOT EXISTS hold_allocations (
        hold_id TEXT NOT NULL,
        voucher_id TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount >= 0),
        PRIMARY KEY (hold_id, voucher_id)
    ) WITHOUT ROWID""",
    # Append-only and never deleted from, so the plain rowid (max + 1) already gives increasing seq
    # numbers without AUTOINCREMENT's extra table write per line.
    """CREATE TABLE IF NOT EXISTS journal (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        startup_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        overage INTEGER NOT NULL,
        breakdown TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        hold_id TEXT,
        reference TEXT NOT NULL,
        model TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        gpu_type TEXT,
        UNIQUE (startup_id, idempotency_key)
    )""",
    "CREATE INDEX IF NOT EXISTS journal_startup_at ON journal(startup_id, at)",
    """CREATE TABLE IF NOT EXISTS usage_totals (
        startup_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        amount INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (startup_id, kind, label)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS answers (
        startup_id TEXT NOT NULL,
        key TEXT NOT NULL,
        body BLOB NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (startup_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS answers_expiry ON answers(expires_at)",
    """CREATE TABLE IF NOT EXISTS prices (
        model TEXT PRIMARY KEY,
        input_per_1m INTEGER NOT NULL,
        output_per_1m INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS limits (
        startup_id TEXT PRIMARY KEY,
        rpm INTEGER,
        tpm INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS rate_windows (
        startup_id TEXT NOT NULL,
        window_start REAL NOT NULL,
        requests INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (startup_id, window_start)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        url TEXT NOT NULL,
        engine TEXT NOT NULL,
        owner TEXT,
        capacity INTEGER NOT NULL,
        node TEXT,
        context_length INTEGER,
        tokenize_path TEXT,
        health_path TEXT NOT NULL,
        embeddings INTEGER NOT NULL,
        heartbeat_at REAL NOT NULL,
        ttl_s REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS workers_model ON workers(model)",
)

# The scheduler's tables (vouchers.sqlite_jobs): job records, their files (working-dir archive, log tail),
# the leader lease, fair-share usage, queue estimates, a change counter a waiting scheduler polls,
# deployments (vouchers.deployments), and the job caps in `limits`.
_SCHEDULER_V2: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        startup_id TEXT NOT NULL,
        status TEXT NOT NULL,
        idempotency_key TEXT,
        queued_at REAL NOT NULL,
        doc BLOB NOT NULL,
        UNIQUE (startup_id, idempotency_key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS jobs_startup ON jobs(startup_id, queued_at)",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)",
    """CREATE TABLE IF NOT EXISTS job_files (
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scheduler_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fair_share (
        startup_id TEXT PRIMARY KEY,
        value REAL NOT NULL,
        as_of REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS queue_estimates (
        job_id TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        start_at REAL
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS job_changes (id INTEGER PRIMARY KEY CHECK (id = 1), counter INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO job_changes (id, counter) VALUES (1, 0)",
    """CREATE TABLE IF NOT EXISTS deployments (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        doc BLOB NOT NULL
    ) WITHOUT ROWID""",
    # Per-startup job caps beside the rate limits (Slurm's GrpTRES, Kueue's quota).
    "ALTER TABLE limits ADD COLUMN max_gpus INTEGER",
    "ALTER TABLE limits ADD COLUMN max_queued_jobs INTEGER",
)

MIGRATIONS: tuple[Migration, ...] = (
    # IF NOT EXISTS throughout: ledgers made before versions existed already have these tables.
    Migration(1, "the ledger, keys, prices, limits, rate windows, kept answers and the worker registry", _LEDGER_V1),
    Migration(2, "the scheduler: jobs, their files, leader lease, fair share, estimates, deployments, job caps",
              _SCHEDULER_V2),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in a ledger file (0 before any migration)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply the migrations the ledger lacks, in order; the version reached. Runs inside the caller's write
    transaction (`BEGIN IMMEDIATE`), so two processes opening one old ledger migrate it once."""
    found = schema_version(conn)
    known = migrations[-1].version
    if found > known:
        raise SchemaError(
            f"the ledger's schema is version {found}, newer than this shuqi knows ({known}): "
            "it was written by a later release; upgrade shuqi to open it"
        )
    for migration in migrations[found:]:
        for statement in migration.statements:
            conn.execute(statement)
        # PRAGMA takes no parameters; the version is an int from the table above.
        conn.execute(f"PRAGMA user_version = {int(migration.version)}")
    return known

# Connection settings: WAL lets readers run beside the one writer; NORMAL syncs at checkpoints only
# (a crash of the machine may lose the last commits, never corrupt the file); busy_timeout makes a
# second process wait for the write lock instead of failing at once.
PRAGMAS: tuple[str, ...] = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)

"""Open the store named by a URL: `sqlite` (default, under the data dir), `sqlite:///path`, `redis://...`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vouchers.clock import Clock, SystemClock
from vouchers.deployments import DeploymentStore
from vouchers.jobs import JobStore, SchedulerState
from vouchers.store import Store


async def open_store(url: str, *, data_dir: Path, clock: Clock | None = None, namespace: str = "shuqi") -> Store:
    """Open and initialise a store; the caller closes it."""
    clock = clock or SystemClock()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from vouchers.redis_store import RedisStore

        return await RedisStore.open(url, clock=clock, namespace=namespace)
    if url == "sqlite":
        path = data_dir / "ledger.db"
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    else:
        raise ValueError(f"unknown store {url!r}: use 'sqlite', 'sqlite:///PATH' or a redis:// URL")
    from vouchers.sqlite_store import SqliteStore

    return await SqliteStore.open(path, clock=clock)


class ClosableJobStore(JobStore, SchedulerState, DeploymentStore, Protocol):
    async def close(self) -> None: ...


async def open_job_store(url: str, *, data_dir: Path, clock: Clock | None = None,
                         namespace: str = "shuqi") -> ClosableJobStore:
    """Open the scheduler's job records on the same store as the ledger; the caller closes it."""
    clock = clock or SystemClock()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from vouchers.redis_jobs import RedisJobs

        return await RedisJobs.open(url, namespace=namespace, clock=clock)
    path = data_dir / "ledger.db" if url == "sqlite" else Path(url.removeprefix("sqlite:///"))
    from vouchers.sqlite_jobs import SqliteJobs
    from vouchers.sqlite_runner import SqliteRunner

    runner = SqliteRunner(path)
    await runner.start()
    return SqliteJobs(runner, clock, owns_runner=True)


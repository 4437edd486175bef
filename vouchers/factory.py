"""Open the store named by a URL: `sqlite` (default, under the data dir), `sqlite:///path`, `redis://...`."""

from __future__ import annotations

from pathlib import Path

from vouchers.clock import Clock, SystemClock
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

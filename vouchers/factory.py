"""Open the stores a URL names, together: `sqlite` (default, under the data dir), `sqlite:///path`, `redis://...`.

`open_stores` returns one `Stores` bundle: a part per concept, all on one backend, sharing its one SQLite
thread or its one Redis connection pool. A service keeps the parts it uses (a worker only the registry);
whoever opened the bundle closes it. A new concept (the scheduler's jobs) is one more field on `Stores`
and one more line in each backend's builder below (`jobs=SqliteJobs(runner, clock)`,
`jobs=RedisJobs(client, namespace, clock)`), each builder having the backend's shared parts at hand.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vouchers.answers import AnswerCache
from vouchers.catalog import Catalog
from vouchers.clock import Clock, SystemClock
from vouchers.deployments import DeploymentStore
from vouchers.directory import Directory
from vouchers.events import EventFeed
from vouchers.jobs import JobStore, SchedulerState
from vouchers.journal import Journal
from vouchers.ledger import Ledger
from vouchers.rates import RateLimiter
from vouchers.registry import Registry

log = logging.getLogger(__name__)

# Enough concurrent requests of one gateway to share connections without queueing for one.
DEFAULT_POOL_SIZE = 64


@dataclass(frozen=True)
class Stores:
    """Every store of one ledger, on one backend; `close` releases the backend they share."""

    ledger: Ledger
    journal: Journal
    directory: Directory
    catalog: Catalog
    rates: RateLimiter
    answers: AnswerCache
    registry: Registry
    jobs: JobStore  # GPU job records
    scheduling: SchedulerState  # what the scheduler shares: its lease, fair share, capacity, estimates
    deployments: DeploymentStore
    events: EventFeed
    _close: Callable[[], Awaitable[None]]

    async def close(self) -> None:
        """Stop hearing events, finish work in flight, then close the connections and threads."""
        await self._close()


def sqlite_path(url: str, data_dir: Path) -> Path | None:
    """The ledger file a SQLite URL names, or None for a URL of another backend (ValueError if unknown)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if url == "sqlite":
        return data_dir / "ledger.db"
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    raise ValueError(f"unknown store {url!r}: use 'sqlite', 'sqlite:///PATH' or a redis:// URL")


async def open_stores(url: str, *, data_dir: Path, clock: Clock | None = None, namespace: str = "shuqi",
                      pool_size: int = DEFAULT_POOL_SIZE) -> Stores:
    """Open and initialise every store of the ledger `url` names; the caller closes the bundle."""
    clock = clock or SystemClock()
    path = sqlite_path(url, data_dir)
    if path is None:
        return await _open_redis(url, clock, namespace, pool_size)
    return await _open_sqlite(path, clock)


async def _open_sqlite(path: Path, clock: Clock) -> Stores:
    from vouchers.events import Unheard
    from vouchers.sqlite_answers import SqliteAnswers
    from vouchers.sqlite_catalog import SqliteCatalog
    from vouchers.sqlite_directory import SqliteDirectory
    from vouchers.sqlite_jobs import SqliteJobs
    from vouchers.sqlite_journal import SqliteJournal
    from vouchers.sqlite_ledger import SqliteLedger
    from vouchers.sqlite_rates import SqliteRates
    from vouchers.sqlite_registry import SqliteRegistry
    from vouchers.sqlite_runner import SqliteRunner

    path.parent.mkdir(parents=True, exist_ok=True)
    runner = SqliteRunner(path)
    await runner.start()
    return Stores(
        ledger=SqliteLedger(runner, clock),
        journal=SqliteJournal(runner),
        directory=SqliteDirectory(runner, clock),
        catalog=SqliteCatalog(runner),
        rates=SqliteRates(runner, clock),
        answers=SqliteAnswers(runner, clock),
        registry=SqliteRegistry(runner, clock),
        jobs=(jobs := SqliteJobs(runner, clock)),
        scheduling=jobs,
        deployments=jobs,
        events=Unheard(),
        _close=runner.close,
    )


async def _open_redis(url: str, clock: Clock, namespace: str, pool_size: int) -> Stores:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff

    from vouchers.redis_answers import RedisAnswers
    from vouchers.redis_catalog import RedisCatalog
    from vouchers.redis_directory import RedisDirectory
    from vouchers.redis_events import EventChannel
    from vouchers.redis_jobs import RedisJobs
    from vouchers.redis_journal import RedisJournal
    from vouchers.redis_keys import RedisKeys
    from vouchers.redis_ledger import RedisLedger
    from vouchers.redis_rates import RedisRates
    from vouchers.redis_registry import RedisRegistry
    from vouchers.redis_scripts import ScriptRunner

    # Blocking pool: a burst beyond pool_size waits for a free connection instead of failing.
    # Plain reads and writes retry on a dropped connection (a server restart or failover); the
    # scripts' own connection reconnects before a batch, never after one was sent.
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3)
    pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=pool_size,
                                                    retry=retry)
    client = aioredis.Redis.from_pool(pool)
    scripts = ScriptRunner(client, url)
    try:
        await scripts.load()
        await _check_server(client)
    except BaseException:
        await client.aclose()
        raise
    keys = RedisKeys(namespace)
    events = EventChannel(client, url, keys)
    jobs = await RedisJobs.open(url, namespace=namespace, clock=clock)

    async def close() -> None:
        await events.close()
        await scripts.aclose()
        await jobs.close()
        await client.aclose()

    return Stores(
        ledger=RedisLedger(client, keys, clock, scripts, events),
        journal=RedisJournal(client, keys),
        directory=RedisDirectory(client, keys, clock, scripts, events),
        catalog=RedisCatalog(client, keys),
        rates=RedisRates(keys, clock, scripts),
        answers=RedisAnswers(client, keys, clock, scripts),
        registry=RedisRegistry(client, keys, clock, scripts),
        jobs=jobs,
        scheduling=jobs,
        deployments=jobs,
        events=events,
        _close=close,
    )


async def _check_server(client: Any) -> None:
    # The ledger is money: say so at start when the server could lose it or evict it (deploy/redis.md).
    persistence = await client.info("persistence")
    if not int(persistence.get("aof_enabled", 0)):
        log.warning("Redis runs without AOF (appendonly no): a restart loses the ledger's recent writes")
    policy = (await client.info("memory")).get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        log.warning("Redis maxmemory-policy is %s: it may evict ledger keys; use noeviction", policy)

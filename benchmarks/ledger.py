"""Ledger benchmark: reserve+settle pairs per second per backend and concurrency, and a Redis baseline.

    .venv/bin/python benchmarks/ledger.py --json [--redis-url URL] [--seconds S]

Each case opens a fresh store (SQLite in a temporary directory, Redis under a unique namespace that is
deleted afterwards), grants one startup a voucher far larger than the run can spend, then runs
`concurrency` tasks that each loop reserve -> settle (final) until the time is up. The baseline is
Debian's `redis-benchmark` running a trivial EVALSHA against the same server with 64 clients.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis.asyncio as aioredis

from vouchers.clock import SystemClock
from vouchers.factory import Stores, open_stores
from vouchers.models import ChargeRef
from vouchers.units import MAX_AMOUNT, Kind

CONCURRENCIES = (1, 64)
REDIS_BENCHMARK = "/usr/bin/redis-benchmark"
STARTUP = "bench"


async def _worker(store: Stores, stop_at: float, counts: list[int], index: int) -> None:
    ref = ChargeRef("bench", model="bench-model", prompt_tokens=10, completion_tokens=20)
    n = 0
    while time.monotonic() < stop_at:
        hold = await store.ledger.reserve(STARTUP, Kind.MODEL, 1000, ttl_s=60, idempotency_key=f"w{index}-{n}")
        await store.ledger.settle(hold.id, 900, ref)
        n += 1
    counts[index] = n


async def _server_cpu_s(url: str | None) -> float:
    """CPU seconds the Redis server has used (0 for SQLite); on a shared server others' load counts too."""
    if url is None:
        return 0.0
    client = aioredis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _case(url: str, data_dir: Path, namespace: str, concurrency: int, seconds: float) -> dict[str, Any]:
    server = url if url.startswith("redis") else None
    store = await open_stores(url, data_dir=data_dir, clock=SystemClock(), namespace=namespace)
    try:
        await store.directory.create_startup(STARTUP, "Benchmark")
        await store.ledger.grant(STARTUP, Kind.MODEL, MAX_AMOUNT)
        # A short warm-up: connections opened, scripts cached, SQLite pages in memory.
        warm_until = time.monotonic() + 0.3
        await asyncio.gather(*(_worker(store, warm_until, [0] * concurrency, i) for i in range(concurrency)))
        counts = [0] * concurrency
        server0 = await _server_cpu_s(server)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.gather(*(_worker(store, wall0 + seconds, counts, i) for i in range(concurrency)))
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        server_cpu = await _server_cpu_s(server) - server0
        balance = await store.ledger.balance(STARTUP)
    finally:
        await store.close()
    pairs = max(sum(counts), 1)
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "pairs": sum(counts),
        "seconds": round(wall, 3),
        "pairs_per_s": round(pairs / wall, 1),
        # CPU time, unlike wall time, stays meaningful when other work shares the cores.
        "client_cpu_us_per_pair": round(1e6 * cpu / pairs, 1),
        "held_after": balance.model.held,
    }
    if server is not None:
        result["server_cpu_us_per_pair"] = round(1e6 * server_cpu / pairs, 1)
    return result


async def _drop_namespace(url: str, namespace: str) -> None:
    client = aioredis.from_url(url)
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


def _sqlite_available() -> bool:
    try:
        import vouchers.sqlite_ledger  # noqa: F401
    except ImportError:
        return False
    return True


async def _backend(name: str, redis_url: str, seconds: float) -> list[dict[str, Any]]:
    results = []
    for concurrency in CONCURRENCIES:
        namespace = f"bench-{uuid.uuid4().hex[:12]}"
        with tempfile.TemporaryDirectory() as tmp:
            url = redis_url if name == "redis" else f"sqlite:///{Path(tmp) / 'ledger.db'}"
            try:
                results.append(await _case(url, Path(tmp), namespace, concurrency, seconds))
            finally:
                if name == "redis":
                    await _drop_namespace(redis_url, namespace)
    return results


async def _script_sha(url: str) -> str:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return str(await client.script_load("return 1"))
    finally:
        await client.aclose()


def _redis_benchmark(url: str, sha: str, seconds: float) -> dict[str, Any]:
    parsed = urlparse(url)
    requests = max(int(40_000 * seconds), 20_000)
    cmd = [REDIS_BENCHMARK, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379)]
    if parsed.password:
        cmd += ["-a", parsed.password]
    db = (parsed.path or "/0").lstrip("/") or "0"
    cmd += ["--dbnum", db, "-c", "64", "-n", str(requests), "--csv", "EVALSHA", sha, "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return {"command": f"EVALSHA <return 1> 0, -c 64 -n {requests}", "ops_per_s": float(rows[-1]["rps"])}


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every case and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "seconds_per_case": args.seconds,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "backends": {},
    }
    report["backends"]["redis"] = await _backend("redis", args.redis_url, args.seconds)
    if _sqlite_available():
        report["backends"]["sqlite"] = await _backend("sqlite", args.redis_url, args.seconds)
    baseline = _redis_benchmark(args.redis_url, await _script_sha(args.redis_url), args.seconds)
    c64 = next(r for r in report["backends"]["redis"] if r["concurrency"] == 64)
    # Each pair is two script calls, so compare calls per second with the baseline's.
    calls = 2 * c64["pairs_per_s"]
    report["redis_benchmark"] = {
        **baseline,
        "ledger_calls_per_s_c64": calls,
        "ratio": round(calls / baseline["ops_per_s"], 3),
    }
    return report


if __name__ == "__main__":
    result = asyncio.run(main())
    args = sys.argv[1:]
    if "--json" in args:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()

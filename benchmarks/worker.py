"""Worker benchmark: tokens/s and time to first token from the CPU worker directly and through the gateway,
in the same run, and the time `shuqi up` takes to become healthy. Prints one JSON object.

    python benchmarks/worker.py --json [--runs 8] [--max-tokens 64] [--out benchmarks/results/worker.json]

It starts `shuqi up` itself (fresh data dir, free port), makes a startup, key and voucher through the admin
API, then alternates identical streamed requests (temperature 0, same seed) direct and through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from vouchers.factory import open_stores
from workers.process import free_port

MODEL = "smollm2-135m"
PROMPT = "Write the numbers from 1 to 200, separated by commas."


def _start_up(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHUQI_", "RAY_"))}
    env.update(SHUQI_PORT=str(port), SHUQI_DATA_DIR=str(data_dir), SHUQI_HOST="127.0.0.1")
    shuqi = Path(sys.executable).parent / "shuqi"
    with open(log, "wb") as out:
        return subprocess.Popen([str(shuqi), "up"], stdout=out, stderr=subprocess.STDOUT, env=env)


async def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 300) -> float:
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - start < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"shuqi up exited with {proc.returncode}")
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("shuqi up did not become healthy")


async def _make_key(url: str, data_dir: Path) -> str:
    token = (data_dir / "admin-token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin:
        (await admin.post("/admin/v1/startups", json={"id": "bench", "name": "Bench"})).raise_for_status()
        key = (await admin.post("/admin/v1/startups/bench/keys", json={})).json()["key"]
        grant = {"kind": "model", "amount": "1000"}
        (await admin.post("/admin/v1/startups/bench/vouchers", json=grant)).raise_for_status()
    return str(key)


async def _worker_url(data_dir: Path) -> str:
    store = await open_stores("sqlite", data_dir=data_dir)
    try:
        workers = await store.registry.list_workers(MODEL)
    finally:
        await store.close()
    return workers[0].url


async def _one_stream(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], max_tokens: int
) -> dict[str, float]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
    }
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", base + "/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                tokens += 1  # llama.cpp streams one token per chunk
                if not first:
                    first = time.perf_counter()
    end = time.perf_counter()
    decode = end - first if first else float("nan")
    return {
        "ttft_s": first - start,
        "tokens": tokens,
        "tok_s": tokens / (end - start),
        "decode_tok_s": (tokens - 1) / decode if decode > 0 else float("nan"),
    }


def _summary(samples: list[dict[str, float]]) -> dict[str, float]:
    return {
        "tok_s_median": round(statistics.median(s["tok_s"] for s in samples), 2),
        "decode_tok_s_median": round(statistics.median(s["decode_tok_s"] for s in samples), 2),
        "ttft_ms_median": round(statistics.median(s["ttft_s"] for s in samples) * 1000, 1),
        "ttft_ms_min": round(min(s["ttft_s"] for s in samples) * 1000, 1),
        "tokens_median": statistics.median(s["tokens"] for s in samples),
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(url: str, direct: str, key: str, runs: int, max_tokens: int, up_pid: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
    up_cpu = {"direct": 0.0, "gateway": 0.0}
    async with httpx.AsyncClient(timeout=300) as client:
        await _one_stream(client, direct, {}, 8)  # warm-up: model pages in, prompt cache filled
        await _one_stream(client, url, {"Authorization": f"Bearer {key}"}, 8)
        for i in range(runs):
            # Alternate which path goes first so drift on a shared machine hits both equally.
            order = [("direct", direct, {}), ("gateway", url, {"Authorization": f"Bearer {key}"})]
            for name, base, headers in order if i % 2 == 0 else reversed(order):
                before = _cpu_s(up_pid)
                samples[name].append(await _one_stream(client, base, headers, max_tokens))
                up_cpu[name] += _cpu_s(up_pid) - before
    result: dict[str, Any] = {name: _summary(values) for name, values in samples.items()}
    result["gateway_over_direct_tok_s"] = round(result["gateway"]["tok_s_median"] / result["direct"]["tok_s_median"], 3)
    result["gateway_added_ttft_ms"] = round(result["gateway"]["ttft_ms_median"] - result["direct"]["ttft_ms_median"], 1)
    # The `shuqi up` process hosts the gateway (and an idle Ray driver): its extra CPU while serving
    # the gateway path, per request, is what the gateway costs on a box it shares with the engine.
    result["gateway_cpu_ms_per_request"] = round((up_cpu["gateway"] - up_cpu["direct"]) / runs * 1000, 1)
    return result


async def run(runs: int, max_tokens: int) -> dict[str, Any]:
    """Start `shuqi up`, measure, stop it; the result object."""
    with tempfile.TemporaryDirectory(prefix="shuqi-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start_up(data_dir, port, Path(tmp) / "up.log")
        try:
            healthy_s = await _wait_healthy(proc, url)
            key = await _make_key(url, data_dir)
            result = await _measure(url, await _worker_url(data_dir), key, runs, max_tokens, proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    result["up_healthy_s"] = round(healthy_s, 2)
    result["runs"] = runs
    result["max_tokens"] = max_tokens
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (the default)")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    result = asyncio.run(run(args.runs, args.max_tokens))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""The four paths the benchmark loads: direct to the fake upstream, shuqi, LiteLLM's proxy, nginx.

Each `start_*` returns a running `Target`: the URL to POST to, the headers a client sends, the proxy
process whose CPU and RSS are measured and any helper process (shuqi's Redis) measured separately.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _install import ensure_litellm, ensure_redis, nginx_binary
from _proc import Service, free_port, start

MODEL = "bench-model"
CHAT_PATH = "/v1/chat/completions"
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


@dataclass
class Target:
    """A path under load: `proxy` is None for the direct case (the upstream is then what is measured)."""

    name: str
    url: str
    headers: dict[str, str]
    proxy: Service | None
    helpers: list[Service] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the proxy, then its helpers."""
        for service in ([self.proxy] if self.proxy else []) + self.helpers:
            service.stop()


def _headers(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


def smoke(target: Target, *, timeout_s: float) -> None:
    """Retry one non-streaming request until it answers 200 with a completion; RuntimeError if it never does."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(target.url, data=body, headers=target.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                if resp.status == 200 and json.loads(resp.read()).get("choices"):
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
            last = f"{exc} {detail}"
        time.sleep(0.5)
    logs = target.proxy.tail() if target.proxy else ""
    raise RuntimeError(f"{target.name} never answered a completion: {last}\n{logs}")


def start_upstream(log_dir: Path, *, chunks: int) -> Service:
    """The fake upstream under uvicorn (uvloop, httptools)."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port), "--chunks", str(chunks)]
    return start("upstream", argv, port=port, log_dir=log_dir)


def direct(upstream: Service) -> Target:
    """Straight to the fake upstream, with the same headers the proxies get."""
    return Target("direct", f"http://127.0.0.1:{upstream.port}{CHAT_PATH}", _headers("sk-direct"), None)


def start_nginx(upstream: Service, work: Path) -> Target:
    """nginx as a plain reverse proxy: one worker, a keep-alive pool to the upstream, no buffering."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    prefix = work / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(
        f"  {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  upstream fake {{ server 127.0.0.1:{upstream.port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;", "-e", str(prefix / "error.log")]
    service = start("nginx", argv, port=port, log_dir=work)
    target = Target("nginx", f"http://127.0.0.1:{port}{CHAT_PATH}", _headers("sk-nginx"), service)
    smoke(target, timeout_s=10)
    return target


def start_litellm(upstream: Service, work: Path) -> Target:
    """LiteLLM's proxy in passthrough with a master key and no database, as ANCHORS.md ran it offline."""
    exe = ensure_litellm(ROOT)
    master = "sk-bench-" + secrets.token_hex(16)
    config = work / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"http://127.0.0.1:{upstream.port}/v1",
                            "api_key": "fake-upstream-key",
                        },
                    }
                ],
                "general_settings": {"master_key": master},
            }
        )
    )
    config.chmod(0o600)
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY_DISABLED": "True",
        "DISABLE_SCHEMA_UPDATE": "True",
        "OTEL_SDK_DISABLED": "true",
    }
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    service = start(
        "litellm", argv, port=port, log_dir=work, env=env, unset=("DATABASE_URL", "REDIS_URL"), cwd=work,
        timeout_s=180,
    )
    target = Target("litellm", f"http://127.0.0.1:{port}{CHAT_PATH}", _headers(master), service)
    smoke(target, timeout_s=60)
    return target


def start_shuqi(upstream: Service, work: Path) -> Target:
    """shuqi's gateway as its own process on a throwaway Redis, seeded through the store API."""
    redis_port = free_port()
    redis_dir = work / "redis"
    redis_dir.mkdir(exist_ok=True)
    redis_argv = [
        ensure_redis(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
        "--dir", str(redis_dir),
    ]
    redis = start("redis", redis_argv, port=redis_port, log_dir=work)
    store_url = f"redis://127.0.0.1:{redis_port}/0"
    namespace = "bench-" + secrets.token_hex(4)
    try:
        key = asyncio.run(_seed(store_url, namespace, upstream, work))
        port = free_port()
        env = {
            "SHUQI_STORE": store_url,
            "SHUQI_NAMESPACE": namespace,
            "SHUQI_HOST": "127.0.0.1",
            "SHUQI_PORT": str(port),
            "SHUQI_DATA_DIR": str(work / "shuqi-data"),
            "SHUQI_ADMIN_TOKEN": "shuqi-admin-" + secrets.token_hex(16),
        }
        argv, launcher = _shuqi_argv()
        gateway = start("shuqi", argv, port=port, log_dir=work, env=env, unset=("REDIS_URL",), timeout_s=60)
    except BaseException:
        redis.stop()
        raise
    target = Target("shuqi", f"http://127.0.0.1:{port}{CHAT_PATH}", _headers(key), gateway, [redis])
    target.info = {"store_url": store_url, "namespace": namespace, "launcher": launcher}
    try:
        smoke(target, timeout_s=30)
    except BaseException:
        target.stop()
        raise
    return target


# Used only while the `shuqi gateway` command does not exist: the app under uvicorn as a service would run it.
_FALLBACK = """
import uvicorn
from gateway.app import create_app
from vouchers.settings import GatewaySettings
s = GatewaySettings()
uvicorn.run(create_app(s), host=s.host, port=s.port, loop="uvloop", http="httptools", access_log=False,
            log_level="warning")
"""


def _shuqi_argv() -> tuple[list[str], str]:
    exe = str(Path(sys.executable).parent / "shuqi")
    probe = subprocess.run([exe, "gateway", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return [exe, "gateway"], "shuqi gateway"
    return [sys.executable, "-c", _FALLBACK], "uvicorn fallback (no `shuqi gateway` command yet)"


async def _seed(store_url: str, namespace: str, upstream: Service, work: Path) -> str:
    """A startup with a key, a large model voucher, a price and one worker at the fake upstream."""
    from vouchers.factory import open_stores
    from vouchers.keys import hash_secret, new_id, new_secret
    from vouchers.models import ApiKey, Price, WorkerRecord
    from vouchers.units import Kind, parse_amount, parse_price

    store = await open_stores(store_url, data_dir=work, namespace=namespace)
    try:
        startup = await store.directory.create_startup("bench", "Benchmark startup")
        secret = new_secret()
        now = time.time()
        await store.directory.add_key(
            ApiKey(id=new_id("key"), startup_id=startup.id, name="bench", key_hash=hash_secret(secret),
                   prefix=secret[:12], created_at=now)
        )
        await store.ledger.grant(startup.id, Kind.MODEL, parse_amount("1000000", Kind.MODEL), note="benchmark")
        await store.catalog.set_price(Price(MODEL, input_per_1m=parse_price("0.5"), output_per_1m=parse_price("1.5")))
        worker = WorkerRecord(
            id="bench-fake", model=MODEL, url=f"http://127.0.0.1:{upstream.port}", engine="fake", capacity=4096,
            context_length=4096, health_path="/health", heartbeat_at=now,
        )
        await store.registry.register_worker(worker, ttl_s=7 * 86400)
    finally:
        await store.close()
    return secret


def charges(target: Target, since: float, until: float) -> int:
    """How many ledger lines (one per charged request) shuqi wrote for the benchmark startup in [since, until]."""
    return asyncio.run(_charges(target.info["store_url"], target.info["namespace"], since, until))


async def _charges(store_url: str, namespace: str, since: float, until: float) -> int:
    from vouchers.factory import open_stores

    store = await open_stores(store_url, data_dir=Path("/nonexistent"), namespace=namespace)
    try:
        return len(await store.journal.journal("bench", since=since, until=until))
    finally:
        await store.close()


def metered(target: Target) -> dict[str, int]:
    """What shuqi's ledger recorded for the benchmark startup: spent micro-credits and tokens."""
    return asyncio.run(_metered(target.info["store_url"], target.info["namespace"]))


async def _metered(store_url: str, namespace: str) -> dict[str, int]:
    from vouchers.factory import open_stores
    from vouchers.units import Kind

    store = await open_stores(store_url, data_dir=Path("/nonexistent"), namespace=namespace)
    try:
        totals = [t for t in await store.journal.usage_totals() if t.startup_id == "bench" and t.kind is Kind.MODEL]
        balance = await store.ledger.balance("bench")
    finally:
        await store.close()
    return {
        "spent_micro_credits": balance.model.spent,
        "held_micro_credits": balance.model.held,
        "prompt_tokens": sum(t.prompt_tokens for t in totals),
        "completion_tokens": sum(t.completion_tokens for t in totals),
    }

"""A real Prometheus (Debian's package) scrapes the gateway: the contract's metrics arrive, typed and live.

The other metrics tests read the text; this one shows that a real scraper accepts it, that the ledger
gauges move as credit burns, and that counters keep their types once Prometheus has them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import stop
from tests.gateway.conftest import ADMIN_TOKEN, MODEL, Running, eventually, register
from tests.gateway.fake_upstream import FakeUpstream, free_port
from tests.gateway.test_metering import MESSAGES
from vouchers.factory import Stores

_CONFIG = """
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: shuqi
    authorization:
      credentials: {token}
    static_configs:
      - targets: ["{target}"]
"""


@dataclass
class Prometheus:
    api: httpx.AsyncClient

    async def query(self, promql: str) -> list[dict[str, Any]]:
        r = await self.api.get("/api/v1/query", params={"query": promql})
        assert r.status_code == 200, r.text
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    async def value(self, promql: str) -> float | None:
        result = await self.query(promql)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus_process(gateway: Running, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make test` installs it (deploy/ensure-prometheus.sh)"
    config = tmp_path / "prometheus.yml"
    config.write_text(_CONFIG.format(token=ADMIN_TOKEN, target=urlsplit(gateway.url).netloc))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


@pytest.fixture
async def prometheus(prometheus_process: str) -> AsyncIterator[Prometheus]:
    async with httpx.AsyncClient(base_url=prometheus_process, timeout=10) as api:
        async def ready() -> bool:
            try:
                return (await api.get("/-/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready)
        yield Prometheus(api)


async def test_prometheus_scrapes_the_burn_down(
    gateway: Running, upstream: FakeUpstream, store: Stores, prometheus: Prometheus
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000000", "1000000")  # a credit per token
    key = await gateway.onboard("acme", "1000")
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)

    async def scraped(promql: str, expected: float) -> bool:
        return await prometheus.value(promql) == expected

    # The scrape is healthy and the ledger figures are the store's: 6 prompt + 2 completion tokens.
    await eventually(lambda: scraped('up{job="shuqi"}', 1.0))
    await eventually(lambda: scraped('shuqi_credits_remaining{startup="acme"}', 992.0))
    assert await prometheus.value('shuqi_credits_granted{startup="acme"}') == 1000.0
    assert await prometheus.value('shuqi_credits_held{startup="acme"}') == 0.0
    assert await prometheus.value(f'shuqi_tokens_total{{startup="acme",model="{MODEL}",type="prompt"}}') == 6.0
    assert await prometheus.value(f'shuqi_requests_total{{startup="acme",model="{MODEL}",code="200"}}') == 1.0

    # The burn-down moves with each request, and Prometheus sees the counters as counters.
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    await eventually(lambda: scraped('shuqi_credits_remaining{startup="acme"}', 968.0))
    await eventually(lambda: scraped(f'shuqi_credits_spent_total{{startup="acme",model="{MODEL}"}}', 32.0))
    metadata = (await prometheus.api.get("/api/v1/metadata")).json()["data"]
    assert metadata["shuqi_credits_spent_total"][0]["type"] == "counter"
    assert metadata["shuqi_credits_remaining"][0]["type"] == "gauge"
    assert metadata["shuqi_request_duration_seconds"][0]["type"] == "histogram"
    assert await prometheus.value(f'shuqi_request_duration_seconds_count{{model="{MODEL}"}}') == 4.0
    targets = (await prometheus.api.get("/api/v1/targets")).json()["data"]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]

"""Model deployments placed by the scheduler on the real Ray test cluster, serving the real bundled model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.scheduler.conftest import GpuCluster
from tests.scheduler.stack import Stack, running_stack

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HOUR_MS = Decimal(3_600_000)


@pytest.fixture
async def stack(gpu_cluster: GpuCluster, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path, "shuqi", gpu_cluster.dashboard_url,
                             gpu_cluster.token) as s:
        yield s


async def _until(check: Any, timeout_s: float = 180.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.5)
    return found


async def test_a_private_deployment_serves_its_owner_and_burns_its_compute_vouchers(stack: Stack) -> None:
    acme = await stack.onboard("acme", gpu_hours="1")
    globex = await stack.onboard("globex", gpu_hours=None)
    r = await stack.admin.post("/admin/v1/deployments", json={
        "name": "acme-smol", "engine": "llamacpp", "model": "bundled:smollm2", "gpus": 1, "replicas": 1,
        "owner": "acme", "gpu_type": "b", "max_model_len": 1024, "capacity": 2})
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["state"] == "PENDING"

    async def serving() -> bool:
        models = (await acme.get("/v1/models")).json()["data"]
        return any(m["id"] == "acme-smol" and m["healthy_replicas"] for m in models)

    try:
        await _until(serving)
    except AssertionError:
        d = (await stack.admin.get(f"/admin/v1/deployments/{dep['id']}")).json()
        logs = await stack.ray.logs(f"{dep['id']}-r0")
        raise AssertionError(f"deployment never served: {d}\n{logs[-3000:]}") from None
    placed = (await stack.admin.get(f"/admin/v1/deployments/{dep['id']}")).json()
    assert placed["state"] == "RUNNING" and len(placed["replica_nodes"]) == 1
    answer = await acme.post("/v1/chat/completions", json={
        "model": "acme-smol", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]})
    assert answer.status_code == 200, answer.text
    # Only its owner sees it.
    assert all(m["id"] != "acme-smol" for m in (await globex.get("/v1/models")).json()["data"])
    other = await globex.post("/v1/chat/completions", json={
        "model": "acme-smol", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]})
    assert other.status_code == 404

    async def burning() -> bool:
        return (await stack.compute(acme))["spent"] > 0

    await _until(burning, 30)
    stopped = await stack.admin.delete(f"/admin/v1/deployments/{dep['id']}")
    assert stopped.status_code == 200 and stopped.json()["stop_requested"]

    async def final() -> dict[str, Any] | None:
        d: dict[str, Any] = (await stack.admin.get(f"/admin/v1/deployments/{dep['id']}")).json()
        return d if d["state"] == "STOPPED" else None

    done = await _until(final, 60)
    balance = await stack.compute(acme)
    assert balance["held"] == 0
    charged_ms = int((Decimal(done["charged_gpu_hours"]) * HOUR_MS).to_integral_value())
    assert int((balance["spent"] * HOUR_MS).to_integral_value()) == charged_ms > 0
    assert round(done["charged_gpu_seconds"] * 1000) * 2 == charged_ms  # type b weighs 2

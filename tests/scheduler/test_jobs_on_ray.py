"""GPU jobs end to end: the gateway's job API, the scheduler, a real two-node Ray cluster with logical GPUs.

The cluster (tests/scheduler/conftest.py) has node type "a" (weight 1) and node type "b" (weight 2),
two GPUs each. A dozen real jobs in all: the arithmetic at scale is proven on the pure functions.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import redis_url
from tests.scheduler.conftest import GpuCluster
from tests.scheduler.stack import Stack, running_stack

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HOUR_MS = Decimal(3_600_000)


@pytest.fixture
async def stack(gpu_cluster: GpuCluster, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path, "shuqi", gpu_cluster.dashboard_url,
                             gpu_cluster.token) as s:
        yield s


def _ms(gpu_hours: str | Decimal) -> int:
    """GPU-hours as the API prints them (a rounded decimal) back to the ledger's GPU-milliseconds."""
    return int((Decimal(gpu_hours) * HOUR_MS).to_integral_value())


def _charged_ms(job: dict[str, Any]) -> int:
    return _ms(job["charged_gpu_hours"])


async def _compute_lines_ms(client: Any) -> int:
    lines = [line for line in (await client.get("/v1/usage")).json()["data"] if line["kind"] == "compute"]
    return sum(_ms(line["amount"]) for line in lines)


async def test_a_job_runs_from_its_working_dir_and_is_charged_its_real_runtime(stack: Stack) -> None:
    acme = await stack.onboard("acme", gpu_hours="1")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train.py", "import os, time\nprint('hello from', os.environ['CUDA_VISIBLE_DEVICES'], "
                               "os.environ['GREETING'])\ntime.sleep(1)\n")
    r = await acme.post("/v1/jobs", json={
        "entrypoint": "python train.py", "gpus": 1, "max_runtime_s": 120, "gpu_type": "a", "name": "hello",
        "env": {"GREETING": "hi"}, "working_dir_zip": base64.b64encode(archive.getvalue()).decode()})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "QUEUED"
    held = await stack.compute(acme)
    assert held["held"] == Decimal(120) / 3600  # gpus x max_runtime x weight 1, held up front
    job = await stack.wait(acme, r.json()["id"])
    assert job["status"] == "SUCCEEDED", job
    logs = (await acme.get(f"/v1/jobs/{job['id']}/logs")).text
    assert "hello from 0 hi" in logs
    # Charged its real runtime (seconds), not its 120 s limit; nothing left held.
    assert 1 <= job["charged_gpu_seconds"] < 60
    after = await stack.compute(acme)
    assert after["held"] == 0
    assert _ms(after["spent"]) == _charged_ms(job) == round(job["charged_gpu_seconds"] * 1000)
    assert after["granted"] == after["spent"] + after["held"] + after["remaining"]


async def test_a_job_its_vouchers_do_not_cover_is_refused_at_once(stack: Stack) -> None:
    acme = await stack.onboard("acme", gpu_hours="0.5")
    r = await acme.post("/v1/jobs", json={"entrypoint": "python x.py", "gpus": 2, "max_runtime_s": 3600})
    assert r.status_code == 429
    assert r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "needs 4 GPU-hours" in error["message"] and "0.5 are available" in error["message"]
    assert (await acme.get("/v1/jobs")).json()["data"] == []
    assert (await stack.compute(acme))["held"] == 0


@pytest.mark.parametrize(("fields", "param"), [
    ({"gpus": 0}, "gpus"), ({"gpus": 3}, "gpus"), ({"gpu_type": "h100"}, "gpu_type"),
    ({"max_runtime_s": 0}, "max_runtime_s"), ({"max_runtime_s": 3601}, "max_runtime_s"),
    ({"env": {"CUDA_VISIBLE_DEVICES": "0,1"}}, "env"), ({"gpus": "2"}, "gpus"), ({"colour": "red"}, "colour"),
])
async def test_bad_fields_are_400_naming_the_field_and_hold_nothing(stack: Stack, fields: dict[str, Any],
                                                                    param: str) -> None:
    acme = await stack.onboard("acme")
    r = await acme.post("/v1/jobs", json={"entrypoint": "python x.py", "gpus": 1, "max_runtime_s": 60, **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (await stack.compute(acme))["held"] == 0


async def test_gpu_type_places_the_job_and_its_weight_prices_it(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    r = await acme.post("/v1/jobs", json={"entrypoint": "python -c \"print('on b')\"", "gpus": 2,
                                          "max_runtime_s": 60, "gpu_type": "b"})
    assert r.status_code == 201, r.text
    assert Decimal(r.json()["held_gpu_hours"]) == Decimal(2 * 60 * 2) / 3600
    job = await stack.wait(acme, r.json()["id"])
    assert (job["status"], job["node_gpu_type"]) == ("SUCCEEDED", "b")
    raw_ms = round(job["charged_gpu_seconds"] * 1000)
    assert _charged_ms(job) == raw_ms * 2  # weight 2


async def test_a_runaway_job_is_timed_out_and_charged_exactly_its_limit(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    r = await acme.post("/v1/jobs", json={"entrypoint": "sleep 600", "gpus": 1, "max_runtime_s": 3,
                                          "gpu_type": "a"})
    job = await stack.wait(acme, r.json()["id"])
    assert job["status"] == "TIMED_OUT"
    assert job["charged_gpu_seconds"] == 3.0
    assert _ms((await stack.compute(acme))["spent"]) == 3000
    assert (await stack.compute(acme))["held"] == 0


async def test_cancel_a_queued_and_a_running_job(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    first = (await acme.post("/v1/jobs", json={"entrypoint": "sleep 600", "gpus": 2, "max_runtime_s": 600,
                                               "gpu_type": "a"})).json()
    await stack.wait(acme, first["id"], ("RUNNING",))
    second = (await acme.post("/v1/jobs", json={"entrypoint": "sleep 600", "gpus": 2, "max_runtime_s": 600,
                                                "gpu_type": "a"})).json()
    queued = await stack.wait(acme, second["id"], ("QUEUED",))
    assert queued["queue_position"] == 1 or queued["queue_position"] is None
    r = await acme.post(f"/v1/jobs/{second['id']}/cancel")
    assert r.json()["status"] == "CANCELLED"
    await asyncio.sleep(1.5)
    r = await acme.post(f"/v1/jobs/{first['id']}/cancel")
    assert r.json()["status"] == "CANCELLED"
    done = await stack.wait(acme, first["id"])
    assert done["status"] == "CANCELLED" and done["started_at"] is not None
    assert (await acme.get(f"/v1/jobs/{second['id']}")).json()["started_at"] is None

    async def settled() -> bool:
        return (await stack.compute(acme))["held"] == 0

    deadline = asyncio.get_running_loop().time() + 30
    while not await settled():
        assert asyncio.get_running_loop().time() < deadline, await stack.compute(acme)
        await asyncio.sleep(0.2)
    charged = (await acme.get(f"/v1/jobs/{first['id']}")).json()
    assert 2 * 1.5 <= charged["charged_gpu_seconds"] < 2 * 60
    assert _ms((await stack.compute(acme))["spent"]) == _charged_ms(charged)
    while (ray_job := await stack.ray.get(first["id"])) is None or not ray_job.status.is_terminal():
        assert asyncio.get_running_loop().time() < deadline + 30, ray_job
        await asyncio.sleep(0.2)


async def test_a_startup_sees_only_its_own_jobs(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    globex = await stack.onboard("globex")
    job = (await acme.post("/v1/jobs", json={"entrypoint": "echo secret-output", "gpus": 1,
                                             "max_runtime_s": 60})).json()
    await stack.wait(acme, job["id"])
    for method, path in (("GET", ""), ("GET", "/logs"), ("POST", "/cancel")):
        r = await globex.request(method, f"/v1/jobs/{job['id']}{path}")
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
        assert "secret-output" not in r.text
    assert (await globex.get("/v1/jobs")).json()["data"] == []
    assert len((await acme.get("/v1/jobs")).json()["data"]) == 1


async def test_a_retried_submit_with_the_same_idempotency_key_runs_once(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    body = {"entrypoint": "echo once", "gpus": 1, "max_runtime_s": 60}
    first = await acme.post("/v1/jobs", json=body, headers={"idempotency-key": "k-1"})
    again = await acme.post("/v1/jobs", json=body, headers={"idempotency-key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    await stack.wait(acme, first.json()["id"])
    assert len((await acme.get("/v1/jobs")).json()["data"]) == 1
    other = await acme.post("/v1/jobs", json={**body, "gpus": 2}, headers={"idempotency-key": "k-1"})
    assert other.status_code == 422


async def test_a_scheduler_restart_finds_the_job_and_charges_it_once(stack: Stack) -> None:
    acme = await stack.onboard("acme")
    job = (await acme.post("/v1/jobs", json={"entrypoint": "sleep 4", "gpus": 1, "max_runtime_s": 60})).json()
    await stack.wait(acme, job["id"], ("RUNNING",))
    await stack.stop_scheduler("s1")
    await asyncio.sleep(2.5)  # the lease lapses; the job runs on in Ray unwatched
    stack.start_scheduler("s2")
    done = await stack.wait(acme, job["id"])
    assert done["status"] == "SUCCEEDED"
    assert await _compute_lines_ms(acme) == _charged_ms(done)
    assert 4 <= done["charged_gpu_seconds"] < 30
    assert (await stack.compute(acme))["held"] == 0


@pytest.mark.redis
async def test_a_standby_takes_over_when_the_leader_dies(gpu_cluster: GpuCluster, tmp_path: Path) -> None:
    namespace = f"test-{uuid.uuid4().hex[:10]}"
    async with running_stack(redis_url(), tmp_path, namespace, gpu_cluster.dashboard_url, gpu_cluster.token) as s:
        standby = s.start_scheduler("s2")
        acme = await s.onboard("acme")
        job = (await acme.post("/v1/jobs", json={"entrypoint": "sleep 3", "gpus": 1, "max_runtime_s": 60})).json()
        await s.wait(acme, job["id"], ("RUNNING",))
        leader, _ = s.schedulers["s1"]
        assert leader.leading and not standby.leading
        await s.stop_scheduler("s1")
        done = await s.wait(acme, job["id"])
        assert standby.leaderships >= 1  # it took over
        assert done["status"] == "SUCCEEDED"
        assert await _compute_lines_ms(acme) == _charged_ms(done)
        assert (await s.compute(acme))["held"] == 0
        ray_jobs = [j for j in await s.ray.list() if j.submission_id == job["id"]]
        assert len(ray_jobs) == 1

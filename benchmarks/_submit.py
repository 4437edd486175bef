"""Submit -> RUNNING through shuqi (gateway, admission hold, scheduler pass, Ray) against Ray's own client.

One Ray head with 2 logical GPUs, one gateway and one scheduler in this process (SQLite store in a temp
dir), and a startup with compute vouchers. Runs alternate: Ray's `JobSubmissionClient.submit_job` ->
Ray reports RUNNING, then `POST /v1/jobs` -> Ray reports the job RUNNING (the time a founder waits for
the job to run, whatever shuqi's own status says), each stopped before the next starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from _ray_submit import ray_submit_to_running, summary

_ADMIN = "bench-admin-token"
_ENTRYPOINT = "python -c 'import time; time.sleep(120)'"


async def _shuqi_once(client: httpx.AsyncClient, ray: Any, poll_s: float) -> float:
    start = time.perf_counter()
    r = await client.post("/v1/jobs", json={"entrypoint": _ENTRYPOINT, "gpus": 1, "max_runtime_s": 600})
    r.raise_for_status()
    job_id = r.json()["id"]
    while (job := await ray.get(job_id)) is None or job.status.value != "RUNNING":
        if job is not None and job.status.is_terminal():
            raise RuntimeError(f"job {job_id} ended {job.status}: {job.message}")
        await asyncio.sleep(poll_s)
    elapsed = time.perf_counter() - start
    (await client.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
    while (job := await ray.get(job_id)) is not None and not job.status.is_terminal():  # noqa: ASYNC110 (polling Ray)
        await asyncio.sleep(poll_s)
    return elapsed


async def _onboard(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {_ADMIN}"}) as admin:
        (await admin.post("/admin/v1/startups", json={"id": "bench", "name": "Bench"})).raise_for_status()
        key = (await admin.post("/admin/v1/startups/bench/keys", json={})).json()["key"]
        (await admin.post("/admin/v1/startups/bench/vouchers", json={"kind": "compute", "amount": "1000"})
         ).raise_for_status()
    return str(key)


async def _run(runs: int, data_dir: Path, cluster: Any) -> dict[str, Any]:
    from gateway.app import create_app
    from gateway.server import uvicorn_config
    from scheduler.ray_jobs import RayJobs
    from scheduler.run import build, worker_env
    from vouchers.clock import SystemClock
    from vouchers.factory import open_stores
    from vouchers.settings import UpSettings
    from workers.process import free_port

    port = free_port()
    settings = UpSettings(data_dir=data_dir, admin_token=_ADMIN, port=port, ray_dashboard=cluster.dashboard_url)
    clock = SystemClock()
    stores = await open_stores(settings.store_url(), data_dir=data_dir, clock=clock)
    server = uvicorn.Server(uvicorn_config(create_app(settings, stores, clock), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    scheduler = build(settings, stores, token=cluster.token, clock=clock, worker_env=worker_env(settings))
    scheduling = asyncio.create_task(scheduler.run())
    ray = RayJobs(cluster.dashboard_url, cluster.token)
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.05)
        key = await _onboard(f"http://127.0.0.1:{port}")
        shuqi: list[float] = []
        direct: list[float] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     headers={"authorization": f"Bearer {key}"}) as client:
            await _shuqi_once(client, ray, 0.02)  # warm-up: the scheduler's first pass, Ray's worker pool
            await asyncio.to_thread(ray_submit_to_running, cluster.dashboard_url, cluster.token, 1)
            for _ in range(runs):  # interleaved, so both see the same machine
                direct += await asyncio.to_thread(ray_submit_to_running, cluster.dashboard_url, cluster.token, 1)
                shuqi.append(await _shuqi_once(client, ray, 0.02))
        ratio = summary(shuqi)["median_s"] / summary(direct)["median_s"]
        return {"ray_submit_job": summary(direct), "shuqi_post_v1_jobs": summary(shuqi),
                "ratio_of_medians": round(ratio, 3)}
    finally:
        scheduling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduling
        server.should_exit = True
        await serving
        await ray.aclose()
        await stores.close()


def submit_to_running(runs: int) -> dict[str, Any]:
    """Medians of `runs` interleaved submits each way, on a Ray head of our own."""
    from shuqi.ray_head import NodeSpec, RayCluster, new_token

    with tempfile.TemporaryDirectory(prefix="shuqi-bench-submit-") as tmp:
        cluster = RayCluster.start(NodeSpec(num_gpus=2), token=new_token(), log_dir=Path(tmp) / "ray")
        try:
            cluster.wait_ready()
            return asyncio.run(_run(runs, Path(tmp) / "data", cluster))
        finally:
            cluster.stop()

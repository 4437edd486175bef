"""Ray's own baseline: `JobSubmissionClient.submit_job` -> RUNNING, as a user of plain Ray would see it.

`ray_submit_to_running` is the reference the scheduler benchmark compares shuqi's submit -> RUNNING
with (same cluster, interleaved runs). Each run submits a 1-GPU job (entrypoint CPUs 0, as shuqi
submits), polls its status every `poll_s` until RUNNING, then stops it and waits until it has ended,
so runs never overlap. Run as a script it starts its own one-node cluster (2 logical GPUs) unless
given a dashboard URL, measures Ray's client and shuqi's `RayJobs` adapter interleaved (warm-up
run first), and prints one JSON object:

    python benchmarks/_ray_submit.py --json [--runs 10] [--dashboard-url URL --token TOKEN]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENTRYPOINT = "python -c 'import time; time.sleep(120)'"
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _wait(client: Any, submission_id: str, statuses: set[str], poll_s: float, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission_id))
        if status in statuses:
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"job {submission_id} not in {statuses} after {timeout_s}s")


def ray_submit_to_running(dashboard_url: str, token: str, n: int, *, poll_s: float = 0.02) -> list[float]:
    """Seconds from `submit_job` to the job seen RUNNING, for `n` jobs one after another."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url, headers={"Authorization": f"Bearer {token}"})
    latencies = []
    for _ in range(n):
        submission_id = f"bench-{uuid.uuid4().hex[:10]}"
        start = time.perf_counter()
        client.submit_job(entrypoint=_ENTRYPOINT, submission_id=submission_id,
                          entrypoint_num_gpus=1, entrypoint_num_cpus=0)
        status = _wait(client, submission_id, {"RUNNING", *_TERMINAL}, poll_s, 60)
        latencies.append(time.perf_counter() - start)
        if status != "RUNNING":
            raise RuntimeError(f"job {submission_id} ended {status}: {client.get_job_logs(submission_id)[-2000:]}")
        client.stop_job(submission_id)
        _wait(client, submission_id, _TERMINAL, poll_s, 60)
    return latencies


async def _job_when(jobs: Any, submission_id: str, done: Callable[[Any], bool], poll_s: float) -> Any:
    while True:
        job = await jobs.get(submission_id)
        if job is not None and done(job):
            return job
        await asyncio.sleep(poll_s)


async def _adapter_once(jobs: Any, poll_s: float) -> float:
    submission_id = f"bench-{uuid.uuid4().hex[:10]}"
    start = time.perf_counter()
    await jobs.submit(submission_id=submission_id, entrypoint=_ENTRYPOINT, gpus=1, gpu_type=None, env={},
                      working_dir=None, metadata={})
    job = await _job_when(jobs, submission_id, lambda j: j.status != "PENDING", poll_s)
    elapsed = time.perf_counter() - start
    if job.status != "RUNNING":
        raise RuntimeError(f"job {submission_id} ended {job.status}: {job.message[-2000:]}")
    await jobs.stop(submission_id)
    await _job_when(jobs, submission_id, lambda j: j.status.is_terminal(), poll_s)
    return elapsed


def rayjobs_submit_to_running(dashboard_url: str, token: str, n: int, *, poll_s: float = 0.02) -> list[float]:
    """The same through shuqi's adapter (`scheduler.ray_jobs.RayJobs`): its overhead over Ray's client."""
    from scheduler.ray_jobs import RayJobs

    async def run() -> list[float]:
        async with RayJobs(dashboard_url, token) as jobs:
            return [await _adapter_once(jobs, poll_s) for _ in range(n)]

    return asyncio.run(run())


def summary(latencies: list[float]) -> dict[str, Any]:
    """Median, min, max and every run, in seconds."""
    return {
        "runs": len(latencies),
        "median_s": round(statistics.median(latencies), 3),
        "min_s": round(min(latencies), 3),
        "max_s": round(max(latencies), 3),
        "all_s": [round(x, 3) for x in latencies],
    }


def _own_cluster_run(runs: int) -> dict[str, Any]:
    from shuqi.ray_head import NodeSpec, RayCluster, new_token

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as logs:
        cluster = RayCluster.start(NodeSpec(num_gpus=2), token=new_token(), log_dir=Path(logs))
        try:
            cluster.wait_ready()
            url, token = cluster.dashboard_url, cluster.token
            ray_submit_to_running(url, token, 1)  # warm-up: worker pool, runtime env
            ray_client: list[float] = []
            adapter: list[float] = []
            for _ in range(runs):  # interleaved, so both see the same machine load
                ray_client += ray_submit_to_running(url, token, 1)
                adapter += rayjobs_submit_to_running(url, token, 1)
            return {"ray_client": summary(ray_client), "rayjobs_adapter": summary(adapter)}
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dashboard-url")
    parser.add_argument("--token")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = parser.parse_args(argv)
    if args.dashboard_url:
        result = {"ray_client": summary(ray_submit_to_running(args.dashboard_url, args.token or "", args.runs))}
    else:
        result = _own_cluster_run(args.runs)
    json.dump({"case": "submit_to_running", **result}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One real two-node Ray cluster for the scheduler tests: GPU type "a" on the head, type "b" on a second node.

Both nodes are `ray start` processes on this machine (logical GPUs, token auth on, dashboard on a free
loopback port), started by `shuqi.ray_head` as `shuqi up` starts its head: from an environment holding
secrets, which the nodes must not pass on to jobs. Started once, stopped after the last test of this package.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from scheduler.ray_jobs import RayJob, RayJobs
from shuqi.ray_head import NodeSpec, RayCluster, new_token

# What the process starting Ray holds and a job must never see (values, so any renaming is caught too).
SECRETS = {
    "SHUQI_ADMIN_TOKEN": "sentinel-admin-4b1d",
    "SHUQI_STORE": "redis://:sentinel-store-pw-77aa@127.0.0.1:6379/4",
    "REDIS_URL": "redis://:sentinel-redis-pw-91c2@127.0.0.1:6379/4",
    "OPENAI_API_KEY": "sentinel-openai-key-3e5f",
    "GATEWAY_SECRET": "sentinel-gateway-secret-0d0d",
    "DB_PASSWORD": "sentinel-db-password-6a6a",
    "ARTIFACT_URL": "https://user:sentinel-url-pw-1f1f@example.com/bucket",
}


@dataclass
class GpuCluster:
    """The session's cluster: where to reach it, its nodes, and a way to add and lose nodes."""

    cluster: RayCluster
    node_a: str
    node_b: str

    @property
    def dashboard_url(self) -> str:
        return self.cluster.dashboard_url

    @property
    def token(self) -> str:
        return self.cluster.token

    def add_node(self, gpus: int, gpu_type: str) -> str:
        """One more node with `gpus` logical GPUs of `gpu_type` and no CPU; its node id."""
        return self.cluster.add_node(NodeSpec(num_gpus=gpus, num_cpus=0, resources={f"accelerator_type:{gpu_type}": 1}))

    def lose_node(self, node_id: str) -> None:
        """SIGKILL a node's processes at once, as when its machine dies."""
        self.cluster.remove_node(node_id, graceful=False)


# Package scope: started once, for the first test here that needs it, and stopped when this package's tests
# are done, so it never runs beside the Ray clusters of tests/shuqi and tests/workers (2 cores).
@pytest.fixture(scope="package")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    environ = {**os.environ, **SECRETS}
    cluster = RayCluster.start(
        NodeSpec(num_gpus=2, num_cpus=2, resources={"accelerator_type:a": 1}),
        token=new_token(),
        log_dir=tmp_path_factory.mktemp("ray-logs"),
        environ=environ,
    )
    try:
        node_a = cluster.wait_ready()
        node_b = cluster.add_node(NodeSpec(num_gpus=2, num_cpus=0, resources={"accelerator_type:b": 1}))
        yield GpuCluster(cluster, node_a, node_b)
    finally:
        cluster.stop()


@pytest.fixture
async def ray_jobs(gpu_cluster: GpuCluster) -> AsyncIterator[RayJobs]:
    async with RayJobs(gpu_cluster.dashboard_url, gpu_cluster.token, timeout_s=10.0) as jobs:
        yield jobs


async def poll(check: Callable[[], Awaitable[object]], timeout_s: float, interval_s: float = 0.1) -> float:
    """Call `check` until it returns something truthy; seconds it took, or fail the test at the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(interval_s)
    pytest.fail(f"condition not met within {timeout_s}s")


async def wait_status(jobs: RayJobs, submission_id: str, statuses: set[str], timeout_s: float = 60.0) -> RayJob:
    """Poll the job until its status is one of `statuses`; the job then."""
    seen: list[RayJob] = []

    async def reached() -> bool:
        job = await jobs.get(submission_id)
        if job is not None:
            seen.append(job)
        return job is not None and job.status in statuses

    await poll(reached, timeout_s)
    return seen[-1]

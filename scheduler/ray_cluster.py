"""`scheduler.executor.Executor` on Ray: jobs through the Job Submission API (`scheduler.ray_jobs.RayJobs`).

A job runs as a Ray job whose submission id is the shuqi job id (so a second submit never starts a
second run), with its GPUs reserved for the entrypoint, pinned to the node the policy chose, on a node of
its GPU type, and tagged with metadata so the scheduler knows its own jobs from others on the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from scheduler.ray_jobs import RayJobs
from scheduler.reconcile import Seen
from vouchers.job_rules import NodeInfo

_TAG = "shuqi_job"


class RayCluster:
    """The scheduler's view of one Ray cluster."""

    def __init__(self, ray: RayJobs) -> None:
        self._ray = ray

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n.node_id, n.gpu_type, int(n.gpus), n.alive) for n in await self._ray.nodes() if n.gpus >= 1]

    async def jobs(self) -> dict[str, Seen]:
        seen: dict[str, Seen] = {}
        for job in await self._ray.list():
            if job.metadata.get(_TAG) != "1":
                continue
            seen[job.submission_id] = Seen(status=job.status.value, message=job.message or "", end_time=job.end_time,
                                           node_id=job.driver_node_id)
        return seen

    async def submit(self, *, submission_id: str, entrypoint: str, gpus: int, gpu_type: str, node_id: str,
                     env: Mapping[str, str], working_dir: Path | None, tags: Mapping[str, str]) -> None:
        await self._ray.submit(submission_id=submission_id, entrypoint=entrypoint, gpus=gpus, gpu_type=gpu_type,
                               node_id=node_id or None, env=dict(env), working_dir=working_dir,
                               metadata={**tags, _TAG: "1"})

    async def stop(self, job_id: str) -> None:
        await self._ray.stop(job_id)

    async def logs(self, job_id: str) -> str:
        return await self._ray.logs(job_id)

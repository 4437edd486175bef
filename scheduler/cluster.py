"""What the scheduler needs of the cluster that runs jobs (Ray, through `scheduler.ray_cluster.RayCluster`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from scheduler.reconcile import Seen
from vouchers.job_rules import NodeInfo
from vouchers.jobs import Job


class Cluster(Protocol):
    async def nodes(self) -> list[NodeInfo]:
        """Every node with GPUs, alive or not, with its GPU type."""
        ...

    async def jobs(self) -> dict[str, Seen]:
        """shuqi's jobs the cluster knows, by job id (Ray's submission id)."""
        ...

    async def submit(self, job: Job, *, node_id: str, gpu_type: str, working_dir: Path | None) -> None:
        """Run the job on that node with its GPUs; submitting the same job again starts nothing new."""
        ...

    async def stop(self, job_id: str) -> None: ...

    async def logs(self, job_id: str) -> str: ...

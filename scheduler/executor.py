"""What the scheduler needs of the cluster that runs its jobs and replicas (Ray: `scheduler.ray_cluster.RayCluster`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from scheduler.reconcile import Seen
from vouchers.job_rules import NodeInfo


class Executor(Protocol):
    async def nodes(self) -> list[NodeInfo]:
        """Every node with GPUs, alive or not, with its GPU type."""
        ...

    async def jobs(self) -> dict[str, Seen]:
        """What shuqi runs on the cluster (jobs, deployment replicas), by submission id."""
        ...

    async def submit(self, *, submission_id: str, entrypoint: str, gpus: int, gpu_type: str, node_id: str,
                     env: Mapping[str, str], working_dir: Path | None, tags: Mapping[str, str]) -> None:
        """Run a command on that node with its GPUs; submitting the same id again starts nothing new."""
        ...

    async def stop(self, job_id: str) -> None: ...

    async def logs(self, job_id: str) -> str: ...

"""The deployment-record rules of `vouchers.deployments`, on both backends."""

from __future__ import annotations

import asyncio

from vouchers.deployments import Deployment, DeploymentState
from vouchers.jobs import JobRecords as ClosableJobStore


def _deployment(i: int, owner: str | None = None) -> Deployment:
    return Deployment(id=f"dep-{i}", name=f"m{i}", engine="llamacpp", model="bundled:smollm2", gpus=1, replicas=2,
                      created_at=float(i), owner=owner)


async def test_create_list_and_compare_and_set(jobs: ClosableJobStore) -> None:
    a = await jobs.create_deployment(_deployment(1))
    b = await jobs.create_deployment(_deployment(2, owner="acme"))
    assert [d.id for d in await jobs.list_deployments()] == [a.id, b.id]
    assert await jobs.get_deployment(b.id) == b
    running = await jobs.update_deployment(a.id, DeploymentState.PENDING,
                                           {"state": DeploymentState.RUNNING, "nodes": ("n1", "n2")})
    assert running is not None and running.nodes == ("n1", "n2")
    # Only one of two racers moves it; a final state is final.
    outcomes = await asyncio.gather(
        jobs.update_deployment(a.id, DeploymentState.RUNNING, {"state": DeploymentState.STOPPED}),
        jobs.update_deployment(a.id, DeploymentState.RUNNING, {"state": DeploymentState.FAILED}),
    )
    assert sum(o is not None for o in outcomes) == 1
    final = await jobs.get_deployment(a.id)
    assert final is not None and final.state.is_final()
    assert await jobs.update_deployment(a.id, final.state, {"reason": "x"}) is None
    assert [d.id for d in await jobs.list_deployments(include_final=False)] == [b.id]
    assert await jobs.get_deployment("dep-none") is None

"""The job-record rules of `vouchers.jobs`, held to on both backends."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from vouchers.clock import ManualClock
from vouchers.errors import Conflict
from vouchers.jobs import Job, JobStatus, QueueFull, Usage
from vouchers.jobs import JobRecords as ClosableJobStore


def _job(startup: str = "acme", *, key: str | None = None, at: float = 1000.0, **kw: object) -> Job:
    return Job(id="job-" + uuid.uuid4().hex[:12], startup_id=startup, entrypoint="python train.py", gpus=1,
               max_runtime_s=60, hold_id="h-" + uuid.uuid4().hex[:8], queued_at=at, idempotency_key=key,
               env={"A": "1"}, **kw)  # type: ignore[arg-type]


async def test_create_get_and_list_newest_first(jobs: ClosableJobStore) -> None:
    a = await jobs.create(_job(at=1.0, name="first"))
    b = await jobs.create(_job(at=2.0))
    other = await jobs.create(_job("globex", at=3.0))
    assert await jobs.get(a.id) == a
    assert (await jobs.get(a.id)).env == {"A": "1"}  # type: ignore[union-attr]
    assert [j.id for j in await jobs.list_jobs("acme")] == [b.id, a.id]
    assert [j.id for j in await jobs.list_jobs()] == [other.id, b.id, a.id]
    assert await jobs.get("job-nope") is None


async def test_same_idempotency_key_returns_the_first_job(jobs: ClosableJobStore) -> None:
    first = await jobs.create(_job(key="k1"))
    again = await jobs.create(_job(key="k1"))
    assert again.id == first.id and again.replayed
    assert len(await jobs.list_jobs("acme")) == 1
    # Another startup may use the same key.
    assert (await jobs.create(_job("globex", key="k1"))).id != first.id


async def test_queue_cap_is_checked_with_the_insert(jobs: ClosableJobStore) -> None:
    results = await asyncio.gather(*(jobs.create(_job(), max_queued=3) for _ in range(8)), return_exceptions=True)
    created = [r for r in results if isinstance(r, Job)]
    assert len(created) == 3
    assert all(isinstance(r, QueueFull) for r in results if not isinstance(r, Job))
    # A job that leaves QUEUED frees a place.
    await jobs.transition(created[0].id, JobStatus.QUEUED, JobStatus.RUNNING, {"started_at": 5.0})
    assert (await jobs.create(_job(), max_queued=3)).status is JobStatus.QUEUED


async def test_transition_is_compare_and_set(jobs: ClosableJobStore) -> None:
    job = await jobs.create(_job())
    running = await jobs.transition(job.id, JobStatus.QUEUED, JobStatus.RUNNING, {"started_at": 10.0, "node_id": "n1"})
    assert running is not None and running.status is JobStatus.RUNNING and running.node_id == "n1"
    # Two racers: exactly one moves it.
    outcomes = await asyncio.gather(
        jobs.transition(job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, {"ended_at": 20.0}),
        jobs.transition(job.id, JobStatus.RUNNING, JobStatus.CANCELLED, {"ended_at": 21.0, "reason": "cancelled"}),
    )
    assert sum(o is not None for o in outcomes) == 1
    final = await jobs.get(job.id)
    assert final is not None and final.status.is_terminal() and final.started_at == 10.0
    # Terminal is final; a fixed field cannot change.
    with pytest.raises(Conflict):
        await jobs.transition(job.id, final.status, JobStatus.RUNNING)
    assert await jobs.transition(job.id, JobStatus.QUEUED, JobStatus.CANCELLED) is None
    with pytest.raises(ValueError):
        await jobs.transition(job.id, JobStatus.QUEUED, JobStatus.RUNNING, {"gpus": 8})


async def test_active_listing_and_charges_only_grow(jobs: ClosableJobStore) -> None:
    queued = await jobs.create(_job())
    running = await jobs.create(_job("globex"))
    await jobs.transition(running.id, JobStatus.QUEUED, JobStatus.RUNNING, {"started_at": 1.0})
    done = await jobs.create(_job())
    await jobs.transition(done.id, JobStatus.QUEUED, JobStatus.REJECTED, {"reason": "no cover"})
    active = await jobs.list_jobs(statuses=[JobStatus.QUEUED, JobStatus.RUNNING])
    assert {j.id for j in active} == {queued.id, running.id}
    await jobs.note_charge(running.id, gpu_ms=5000, charged_ms=10000)
    await jobs.note_charge(running.id, gpu_ms=4000, charged_ms=8000)
    job = await jobs.get(running.id)
    assert job is not None and (job.charged_gpu_ms, job.charged_ms) == (5000, 10000)


async def test_archive_and_logs(jobs: ClosableJobStore) -> None:
    blob = bytes(range(256)) * 10
    job = await jobs.create(_job(has_archive=True), archive=blob)
    assert await jobs.archive(job.id) == blob
    assert await jobs.logs(job.id) is None
    await jobs.set_logs(job.id, "hello\n")
    await jobs.set_logs(job.id, "hello\nworld\n")
    assert await jobs.logs(job.id) == "hello\nworld\n"


async def test_leader_lease(jobs: ClosableJobStore, backend: str, clock: ManualClock) -> None:
    assert await jobs.lead("a", ttl_s=0.3)
    assert not await jobs.lead("b", ttl_s=0.3)
    assert await jobs.lead("a", ttl_s=0.3)  # renewal
    # Redis keeps the TTL with its own clock; SQLite with the store's.
    if backend == "redis":
        await asyncio.sleep(0.4)
    else:
        clock.advance(0.4)
    assert await jobs.lead("b", ttl_s=0.3)
    assert not await jobs.lead("a", ttl_s=0.3)


async def test_usage_and_wake(jobs: ClosableJobStore) -> None:
    await jobs.set_usage("acme", Usage(12.5, 100.0))
    await jobs.set_usage("acme", Usage(13.5, 101.0))
    assert await jobs.usage() == {"acme": Usage(13.5, 101.0)}
    await jobs.wait_changed(0.05)  # settles what came before
    assert not await jobs.wait_changed(0.2)
    waiter = asyncio.create_task(jobs.wait_changed(5.0))
    await asyncio.sleep(0.05)
    await jobs.create(_job())
    assert await asyncio.wait_for(waiter, 3.0)


async def test_capacity_and_estimates(jobs: ClosableJobStore) -> None:
    from vouchers.job_rules import NodeInfo
    from vouchers.jobs import Estimate

    assert await jobs.capacity() is None
    nodes = [NodeInfo("n1", "a100", 4), NodeInfo("n2", "default", 2, alive=False)]
    await jobs.set_capacity(nodes)
    assert await jobs.capacity() == nodes
    await jobs.set_estimates({"j1": Estimate(1, 10.5), "j2": Estimate(2, None)})
    assert await jobs.estimates(["j1", "j2", "j3"]) == {"j1": Estimate(1, 10.5), "j2": Estimate(2, None)}
    await jobs.set_estimates({"j2": Estimate(1, 3.0)})
    assert await jobs.estimates(["j1", "j2"]) == {"j2": Estimate(1, 3.0)}

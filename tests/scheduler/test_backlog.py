"""The backlog the service keeps between passes: the same decisions as from a plain list of jobs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.backlog import Backlog
from scheduler.policy import plan
from scheduler.records import Node, Pending, Reservation
from tests.scheduler.factories import NOW, job

jobs = st.lists(
    st.builds(
        Pending,
        id=st.sampled_from([f"j{i}" for i in range(30)]),
        startup=st.sampled_from(["a", "b", "c"]),
        gpus=st.integers(1, 8),
        gpu_type=st.sampled_from([None, "default", "a100"]),
        max_runtime_s=st.sampled_from([60.0, 600.0, 3600.0]),
        submitted_at=st.sampled_from([NOW - 30, NOW - 20, NOW - 10]),
        priority=st.integers(0, 2),
    ),
    unique_by=lambda j: j.id,
)


def test_a_startups_jobs_come_out_by_priority_then_age_then_id() -> None:
    backlog = Backlog([job("x3", "a", at=NOW - 5), job("x2", "a", at=NOW - 9), job("y", "b")])
    backlog.add(job("x1", "a", at=NOW - 5))
    backlog.add(job("x0", "a", at=NOW, priority=1))
    assert [j.id for j in backlog.groups()["a"]] == ["x0", "x2", "x1", "x3"]
    assert backlog.discard("x2") is not None and backlog.discard("x2") is None
    assert backlog.discard("y") is not None
    assert [j.id for j in backlog.groups()["a"]] == ["x0", "x1", "x3"] and "b" not in backlog.groups()
    assert len(backlog) == 3 and "x1" in backlog and "y" not in backlog


@given(jobs, st.lists(st.sampled_from([f"j{i}" for i in range(30)])), st.sampled_from([None, "j0", "j5"]))
def test_a_pass_over_a_kept_backlog_decides_as_one_over_the_list(
    queued: list[Pending], removed: list[str], keep_head: str | None
) -> None:
    backlog = Backlog()
    for j in reversed(queued):
        backlog.add(j)
    for job_id in removed:
        backlog.discard(job_id)
    remaining = [j for j in queued if j.id not in removed]
    nodes = [Node("n0", "default", 8), Node("n1", "a100", 4)]
    busy = [Reservation("r", "a", "n0", 5, NOW + 600)]
    usage = {"a": 10.0, "b": 5.0}
    assert plan(backlog, busy, nodes, usage, NOW, keep_head=keep_head) == plan(
        remaining, busy, nodes, usage, NOW, keep_head=keep_head
    )

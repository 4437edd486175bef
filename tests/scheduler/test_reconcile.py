"""What the scheduler does with a RUNNING job, given what Ray says of it (pure)."""

from __future__ import annotations

from scheduler.reconcile import NODE_LOST, RAY_LOST, STOPPED_OUTSIDE, Action, Seen, judge
from vouchers.jobs import Job, JobStatus

T0 = 1_000.0


def _running(max_runtime_s: int = 60) -> Job:
    return Job(id="job-1", startup_id="acme", entrypoint="x", gpus=1, max_runtime_s=max_runtime_s, hold_id="h",
               queued_at=T0 - 5, status=JobStatus.RUNNING, started_at=T0, node_id="n1")


def test_keeps_a_job_that_runs_within_its_limit() -> None:
    assert judge(_running(), Seen("RUNNING", node_id="n1"), set(), T0 + 30, submit_grace_s=60).action is Action.KEEP
    assert judge(_running(), Seen("PENDING"), set(), T0 + 1, submit_grace_s=60).action is Action.KEEP


def test_finished_jobs_end_when_ray_says_never_past_the_limit() -> None:
    v = judge(_running(), Seen("SUCCEEDED", end_time=T0 + 12.5), set(), T0 + 14, submit_grace_s=60)
    assert (v.action, v.status, v.ended_at, v.stop) == (Action.END, JobStatus.SUCCEEDED, T0 + 12.5, False)
    v = judge(_running(), Seen("FAILED", "exit code 3", end_time=T0 + 99), set(), T0 + 100, submit_grace_s=60)
    assert (v.status, v.reason, v.ended_at) == (JobStatus.FAILED, "exit code 3", T0 + 60)


def test_a_job_at_its_limit_is_stopped_and_timed_out_at_exactly_the_limit() -> None:
    v = judge(_running(), Seen("RUNNING"), set(), T0 + 61.7, submit_grace_s=60)
    assert (v.action, v.status, v.ended_at, v.stop) == (Action.END, JobStatus.TIMED_OUT, T0 + 60, True)
    # Stopped by us at the limit, seen stopped on the next pass: still TIMED_OUT, charged the limit.
    v = judge(_running(), Seen("STOPPED", end_time=T0 + 60.4), set(), T0 + 62, submit_grace_s=60)
    assert (v.status, v.ended_at) == (JobStatus.TIMED_OUT, T0 + 60)


def test_node_lost_ends_failed_charged_up_to_the_loss() -> None:
    v = judge(_running(), Seen("RUNNING", node_id="n1"), {"n1"}, T0 + 20, submit_grace_s=60)
    assert (v.status, v.reason, v.ended_at, v.stop) == (JobStatus.FAILED, NODE_LOST, T0 + 20, True)
    v = judge(_running(), Seen("FAILED", "raylet died", end_time=T0 + 18), {"n1"}, T0 + 20, submit_grace_s=60)
    assert (v.status, v.reason, v.ended_at) == (JobStatus.FAILED, NODE_LOST, T0 + 18)


def test_unknown_to_ray_is_submitted_again_then_given_up() -> None:
    assert judge(_running(), None, set(), T0 + 5, submit_grace_s=60).action is Action.SUBMIT
    v = judge(_running(3600), None, set(), T0 + 120, submit_grace_s=60)
    assert (v.status, v.reason, v.ended_at) == (JobStatus.FAILED, RAY_LOST, T0 + 120)


def test_stopped_by_someone_else_fails() -> None:
    v = judge(_running(), Seen("STOPPED", end_time=T0 + 10), set(), T0 + 11, submit_grace_s=60)
    assert (v.status, v.reason, v.ended_at) == (JobStatus.FAILED, STOPPED_OUTSIDE, T0 + 10)

"""What happens to a RUNNING job, given what Ray says of it: a pure decision, one per job per pass.

- Ray finished it: SUCCEEDED, or FAILED with Ray's message (`node_lost` when its node died), ended
  when Ray says it ended (never past the job's limit).
- It reached `max_runtime_s`: stop it, TIMED_OUT, charged exactly the limit.
- Its node died under it: stop it, FAILED with reason `node_lost`, charged up to now.
- Ray does not know it: it was marked RUNNING but the submit never reached Ray (a crash in between),
  so submit it again (same submission id: Ray never runs it twice); past a grace period Ray has lost it
  (a cluster restart), and it ends FAILED.
- Otherwise it keeps running and is metered.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from vouchers.jobs import Job, JobStatus

NODE_LOST = "node_lost"
TIMED_OUT = "max_runtime reached"
RAY_LOST = "ray_lost: the cluster no longer knows this job"
STOPPED_OUTSIDE = "stopped outside shuqi"


class Action(StrEnum):
    KEEP = "keep"
    SUBMIT = "submit"
    END = "end"


@dataclass(frozen=True)
class Seen:
    """A job as Ray reports it."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str = ""
    end_time: float | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class Verdict:
    action: Action
    status: JobStatus | None = None
    reason: str = ""
    ended_at: float | None = None
    stop: bool = False  # stop it in Ray first


_KEEP = Verdict(Action.KEEP)


def judge(job: Job, seen: Seen | None, dead_nodes: Collection[str], now: float, *, submit_grace_s: float) -> Verdict:
    """The verdict on one RUNNING job this pass."""
    started = job.started_at if job.started_at is not None else now
    limit_at = started + job.max_runtime_s
    if seen is None:
        if now - started < submit_grace_s:
            return Verdict(Action.SUBMIT)
        return Verdict(Action.END, JobStatus.FAILED, RAY_LOST, ended_at=min(now, limit_at))
    node_dead = (seen.node_id or job.node_id) in dead_nodes
    if seen.status in ("SUCCEEDED", "FAILED", "STOPPED"):
        ended = min(seen.end_time if seen.end_time is not None else now, limit_at)
        if seen.status == "SUCCEEDED":
            return Verdict(Action.END, JobStatus.SUCCEEDED, "", ended_at=ended)
        if node_dead:
            return Verdict(Action.END, JobStatus.FAILED, NODE_LOST, ended_at=ended)
        if seen.status == "STOPPED":
            if ended >= limit_at:
                return Verdict(Action.END, JobStatus.TIMED_OUT, TIMED_OUT, ended_at=limit_at)
            return Verdict(Action.END, JobStatus.FAILED, STOPPED_OUTSIDE, ended_at=ended)
        return Verdict(Action.END, JobStatus.FAILED, seen.message[:500] or "the job failed", ended_at=ended)
    if now >= limit_at:
        return Verdict(Action.END, JobStatus.TIMED_OUT, TIMED_OUT, ended_at=limit_at, stop=True)
    if node_dead:
        return Verdict(Action.END, JobStatus.FAILED, NODE_LOST, ended_at=now, stop=True)
    return _KEEP

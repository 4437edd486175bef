"""GPU job records: what founders submitted, where each job stands, and the scheduler's own state.

Rules every backend keeps (one suite, `tests/vouchers/test_job_store.py`, holds both to them):
- A job is created QUEUED, once per (startup, idempotency key): creating it again with the same key
  returns the first job, with `replayed` set, and creates nothing.
- `create` refuses (QueueFull) when the startup already has `max_queued` jobs QUEUED, in the same atomic
  step as the insert, so concurrent submits never pass the cap.
- A status changes only along `JobStatus.allowed` and only by compare-and-set: `transition` names the
  status it expects and changes nothing (returns None) when the job is elsewhere. Terminal states are final.
- Charges recorded on a job only grow (`note_charge` keeps the larger figures): the ledger's hold is the
  truth of what was debited; the job shows it.
- The archive of a job's working directory and the tail of its logs are kept beside it.
- One scheduler instance leads at a time: `lead` takes or renews a lease with a TTL; another instance
  gets it only once the holder stopped renewing it.
- `touch` and `wait_changed` let a scheduler sleep until something was submitted or cancelled.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import orjson

from vouchers.deployments import DeploymentStore
from vouchers.errors import Conflict, ShuqiError
from vouchers.job_rules import NodeInfo


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"

    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)

    def allowed(self) -> frozenset[JobStatus]:
        """The statuses this one may move to."""
        return _TRANSITIONS.get(self, frozenset())


_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.REJECTED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
    ),
}


class QueueFull(ShuqiError):
    """The startup has as many jobs queued as its limit allows."""


@dataclass(frozen=True)
class Job:
    """One GPU job. Times are epoch seconds; charges are GPU-milliseconds (raw, and weighted by GPU type)."""

    id: str
    startup_id: str
    entrypoint: str
    gpus: int
    max_runtime_s: int
    hold_id: str
    queued_at: float
    gpu_type: str | None = None  # None: any type
    name: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    weight_milli: int = 1000  # the weight held for; set to the actual type's weight when it starts
    idempotency_key: str | None = None
    has_archive: bool = False
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    ended_at: float | None = None
    reason: str = ""
    node_id: str | None = None
    started_gpu_type: str | None = None
    charged_gpu_ms: int = 0
    charged_ms: int = 0
    replayed: bool = field(default=False, compare=False)

    def with_changes(self, changes: Mapping[str, object]) -> Job:
        return replace(self, **changes)  # type: ignore[arg-type]


# Fields a transition may change besides the status; anything else about a job is fixed at creation.
MUTABLE = frozenset({"started_at", "ended_at", "reason", "node_id", "started_gpu_type", "weight_milli"})


def check_transition(current: JobStatus, to: JobStatus, changes: Mapping[str, object]) -> None:
    """Raise Conflict if `to` is not reachable from `current` or a change names a fixed field."""
    if to not in current.allowed():
        raise Conflict(f"a {current} job cannot become {to}")
    fixed = set(changes) - MUTABLE
    if fixed:
        raise ValueError(f"fields fixed at creation: {sorted(fixed)}")


@dataclass(frozen=True)
class Usage:
    """A startup's decayed weighted GPU-seconds, as of a time (fair share)."""

    value: float
    as_of: float


class JobStore(Protocol):
    async def create(self, job: Job, *, archive: bytes | None = None, max_queued: int | None = None) -> Job:
        """Insert a QUEUED job (see the rules); QueueFull past `max_queued`."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, startup_id: str | None = None, *, statuses: Collection[JobStatus] | None = None, limit: int = 1000
    ) -> list[Job]:
        """Jobs, newest first, optionally one startup's and only some statuses."""
        ...

    async def transition(
        self, job_id: str, expect: JobStatus, to: JobStatus, changes: Mapping[str, object] | None = None
    ) -> Job | None:
        """Move a job from `expect` to `to` with `changes`; None if it was not at `expect`."""
        ...

    async def note_charge(self, job_id: str, *, gpu_ms: int, charged_ms: int) -> None:
        """Record what the job has been charged so far (figures only ever grow)."""
        ...

    async def archive(self, job_id: str) -> bytes | None: ...

    async def set_logs(self, job_id: str, text: str) -> None: ...

    async def logs(self, job_id: str) -> str | None: ...



@dataclass(frozen=True)
class Estimate:
    """A QUEUED job's place in the queue and when it is expected to start (None: cannot tell yet)."""

    position: int
    start_at: float | None


class SchedulerState(Protocol):
    """What the scheduler shares through the store: its leader lease, fair-share usage, the cluster it saw,
    queue estimates, and a wake-up signal. Implemented by the same classes as `JobStore`."""

    async def lead(self, instance: str, *, ttl_s: float) -> bool:
        """Take or renew the scheduler's leader lease; True while `instance` holds it."""
        ...

    async def usage(self) -> dict[str, Usage]:
        """Every startup's fair-share usage."""
        ...

    async def set_usage(self, startup_id: str, usage: Usage) -> None: ...

    async def touch(self) -> None:
        """Tell a waiting scheduler something changed (a submit or a cancel)."""
        ...

    async def wait_changed(self, timeout_s: float) -> bool:
        """Wait until `touch` was called (by any process on this store) or the timeout passes."""
        ...

    async def set_capacity(self, nodes: Sequence[NodeInfo]) -> None:
        """Publish the cluster's nodes as Ray reports them (the gateway validates submits against them)."""
        ...

    async def capacity(self) -> list[NodeInfo] | None:
        """The nodes last published; None before any scheduler did."""
        ...

    async def set_estimates(self, estimates: Mapping[str, Estimate]) -> None:
        """Replace every queued job's estimate."""
        ...

    async def estimates(self, job_ids: Collection[str]) -> dict[str, Estimate]: ...


def encode_job(job: Job) -> bytes:
    """A job as JSON (every field but `replayed`), the same on both backends."""
    doc = {f: getattr(job, f) for f in _FIELDS}
    doc["env"] = dict(job.env)
    doc["status"] = job.status.value
    return orjson.dumps(doc)


def decode_job(data: bytes | str, *, replayed: bool = False) -> Job:
    doc = orjson.loads(data)
    doc["status"] = JobStatus(doc["status"])
    return Job(**doc, replayed=replayed)


_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f != "replayed")


def encode_nodes(nodes: Sequence[NodeInfo]) -> bytes:
    return orjson.dumps([{"node_id": n.node_id, "gpu_type": n.gpu_type, "gpus": n.gpus, "alive": n.alive}
                         for n in nodes])


def decode_nodes(data: bytes | str) -> list[NodeInfo]:
    return [NodeInfo(**doc) for doc in orjson.loads(data)]


class JobRecords(JobStore, SchedulerState, DeploymentStore, Protocol):
    """The scheduler's part of the store bundle: job records, what the scheduler shares, deployments."""

"""What the scheduling functions take and give: capacity, reservations, queued jobs and the decisions.

Plain frozen records with no behaviour, so the service can build them from Ray and the store and the
simulation can build them from a trace. Times are seconds since the epoch, as the store keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GPU_TYPE = "default"


@dataclass(frozen=True, slots=True)
class Node:
    """A node's GPU capacity as Ray reports it."""

    node_id: str
    gpu_type: str
    gpus: int
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Reservation:
    """GPUs held on a node: a running job, or a deployment replica (no end)."""

    id: str
    startup: str | None
    node_id: str
    gpus: int
    ends_at: float | None


@dataclass(frozen=True, slots=True)
class Pending:
    """A QUEUED job."""

    id: str
    startup: str
    gpus: int
    gpu_type: str | None
    max_runtime_s: float
    submitted_at: float
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Start:
    """Start `job_id` on `node_id` now; `backfilled` when it goes ahead of the protected head job."""

    job_id: str
    node_id: str
    backfilled: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """One scheduling pass: the jobs to start now and the head job the pass protected.

    `head` is the first job in order that cannot start now and that some node could hold later;
    `head_start_at` is its reserved start (the shadow time). When every blocked job is one no node
    could ever hold (a GPU type whose nodes are all held by deployments), `head` is the first of them
    and `head_start_at` is None: it protects nothing.
    """

    starts: tuple[Start, ...]
    head: str | None
    head_start_at: float | None
    looked_at: int = 0  # queued jobs the pass considered (its cost; a metric worth exporting)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A queued job's place in the fair-share order (1-based) and when it would start.

    `start_at` is None when the forecast found no start (no node can ever hold the job) or when the
    job lies past the forecast's `limit` (`beyond_limit`).
    """

    position: int
    start_at: float | None
    beyond_limit: bool = False

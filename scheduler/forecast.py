"""Queue positions and estimated start times for queued jobs (`squeue --start`).

`estimate` steps the same model the simulation steps (`scheduler.cluster`) forward from `now`: running
jobs end at their limits, queued jobs run to theirs, no new job arrives, and each event runs a pass
with the same fair share, caps and backfill as the service. A job's estimate is therefore exact when
those assumptions hold and early otherwise (jobs that end early free GPUs sooner; a job submitted
later by a startup with less usage may go first).

Cost: positions are given for every queued job (one O(n log n) walk of the fair-share order); start
times only for the first `limit` jobs in that order, and the forward run holds only those jobs, so it
costs about `limit` passes over at most `limit` jobs. Jobs past the limit could in truth backfill
ahead of some within it; the forecast leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from scheduler.backlog import Backlog
from scheduler.cluster import Cluster, FairPolicy
from scheduler.fairshare import DEFAULT_HALF_LIFE_S, DEFAULT_LOOKAHEAD_S, Turns, commitment
from scheduler.policy import DEFAULT_BACKFILL_DEPTH, shares
from scheduler.records import DEFAULT_GPU_TYPE, Estimate, Node, Pending, Reservation


def positions(
    pending: Iterable[Pending],
    running: Sequence[Reservation],
    nodes: Sequence[Node],
    usage: Mapping[str, float],
    now: float,
    *,
    weights: Mapping[str, float] | None = None,
    lookahead_s: float = DEFAULT_LOOKAHEAD_S,
    keep_head: str | None = None,
) -> dict[str, int]:
    """Each queued job's 1-based place in the fair-share order, as if each started when its turn came."""
    weights = weights or {}
    turns = Turns(pending, shares(running, nodes, usage, now, weights=weights, lookahead_s=lookahead_s),
                  first=keep_head)
    out: dict[str, int] = {}
    while (job := turns.take()) is not None:
        out[job.id] = len(out) + 1
        weight = weights.get(job.gpu_type or DEFAULT_GPU_TYPE, 1.0)
        turns.back(job.startup, commitment(job.gpus, weight, job.max_runtime_s, lookahead_s))
    return out


def estimate(
    pending: Iterable[Pending],
    running: Sequence[Reservation],
    nodes: Sequence[Node],
    usage: Mapping[str, float],
    now: float,
    *,
    limit: int = 1000,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    max_gpus: Mapping[str, int | None] | None = None,
    weights: Mapping[str, float] | None = None,
    lookahead_s: float = DEFAULT_LOOKAHEAD_S,
    keep_head: str | None = None,
    backfill_depth: int = DEFAULT_BACKFILL_DEPTH,
) -> dict[str, Estimate]:
    """Every queued job's position, and for the first `limit` in order when it would start."""
    weights = weights or {}
    pending = pending if isinstance(pending, Backlog) else Backlog(pending)
    order = positions(pending, running, nodes, usage, now, weights=weights, lookahead_s=lookahead_s,
                      keep_head=keep_head)
    policy = FairPolicy(max_gpus=max_gpus or {}, weights=weights, lookahead_s=lookahead_s,
                        backfill_depth=backfill_depth)
    cluster = Cluster(nodes, policy, now, half_life_s=half_life_s, weights=weights, usage=usage, running=running,
                      head=keep_head)
    for job in pending:
        if order[job.id] <= limit:
            cluster.submit(job)
    while cluster.pending:
        cluster.schedule()
        next_end = cluster.next_end()
        if next_end is None:
            break
        cluster.advance(next_end)
    started = cluster.journal.started_at
    return {
        job.id: Estimate(order[job.id], started.get(job.id), beyond_limit=order[job.id] > limit) for job in pending
    }

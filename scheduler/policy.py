"""One scheduling pass: which queued jobs start now, on which node, and which job the pass protects.

`plan` is a pure function of the queue, the reservations, the nodes, the startups' decayed usage and
`now`; it reads no clock and touches no store. The order is fair share between startups (see
`scheduler.fairshare`), then priority, then submit time, then id. A startup whose next job would take
it past its `max_gpus` (running plus started in this pass) sits the rest of the pass out: its jobs
neither start nor become the head, so a capped startup cannot hold a reservation it may not use. A job
that exceeds the cap even with none of its startup's jobs running (only its private deployments) is
passed over instead, so that it does not stop its startup's other jobs for good.
Placement and backfill are in `scheduler.backfill`.

The walk stops once no GPU is free anywhere and the head is known, or after `backfill_depth` jobs that
could not start: given a `Backlog`, a pass costs O(startups + running) plus O(log startups) per job it
looks at, whatever the length of the queue.
Measured by `benchmarks/scheduler.py` (section "pass").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.backfill import Capacity, Shadow
from scheduler.backlog import Backlog
from scheduler.fairshare import DEFAULT_LOOKAHEAD_S, Turns, commitment
from scheduler.records import DEFAULT_GPU_TYPE, Estimate, Node, Pending, Plan, Reservation, Start

__all__ = [
    "DEFAULT_GPU_TYPE",
    "Backlog",
    "Estimate",
    "Node",
    "Pending",
    "Plan",
    "Reservation",
    "Start",
    "plan",
    "shares",
]

DEFAULT_BACKFILL_DEPTH = 1000


def shares(
    running: Sequence[Reservation],
    nodes: Sequence[Node],
    usage: Mapping[str, float],
    now: float,
    *,
    weights: Mapping[str, float],
    lookahead_s: float,
) -> dict[str, float]:
    """Each startup's share at `now`: decayed usage plus what its reservations have committed."""
    types = {node.node_id: node.gpu_type for node in nodes}
    out = dict(usage)
    for r in running:
        if r.startup is None:
            continue
        weight = weights.get(types.get(r.node_id, DEFAULT_GPU_TYPE), 1.0)
        remaining = None if r.ends_at is None else r.ends_at - now
        out[r.startup] = out.get(r.startup, 0.0) + commitment(r.gpus, weight, remaining, lookahead_s)
    return out


@dataclass
class _Pass:
    """The mutable state of one pass."""

    capacity: Capacity
    turns: Turns
    in_use: dict[str, int]
    endless: dict[str, int]
    now: float
    max_gpus: Mapping[str, int | None]
    weights: Mapping[str, float]
    lookahead_s: float
    starts: list[Start] = field(default_factory=list)
    looked_at: int = 0
    shadow: Shadow | None = None
    never: Pending | None = None

    def over_cap(self, job: Pending) -> bool:
        cap = self.max_gpus.get(job.startup)
        return cap is not None and self.in_use.get(job.startup, 0) + job.gpus > cap

    def never_under_cap(self, job: Pending) -> bool:
        """Whether the job exceeds its startup's cap even once every job of the startup has ended."""
        cap = self.max_gpus.get(job.startup)
        return cap is not None and self.endless.get(job.startup, 0) + job.gpus > cap

    def start(self, job: Pending, node_id: str, *, backfilled: bool) -> None:
        ends_at = self.now + job.max_runtime_s
        self.capacity.take(node_id, job.gpus, ends_at)
        if self.shadow is not None:
            self.shadow.take(node_id, job.gpus, ends_at)
        self.in_use[job.startup] = self.in_use.get(job.startup, 0) + job.gpus
        self.starts.append(Start(job.id, node_id, backfilled))
        weight = self.weights.get(self.capacity.gpu_type(node_id), 1.0)
        self.turns.back(job.startup, commitment(job.gpus, weight, job.max_runtime_s, self.lookahead_s))

    def try_in_order(self, job: Pending) -> bool:
        """Before the head: start the job if it fits, else make it the head (or note it can never start)."""
        node_id = self.capacity.best_fit(job)
        if node_id is not None:
            self.start(job, node_id, backfilled=False)
            return True
        self.shadow = self.capacity.shadow(job, self.now)
        if self.shadow is None and self.never is None:
            self.never = job
        self.turns.back(job.startup)
        return False

    def hold_kept_head(self, job: Pending, running: Sequence[Reservation]) -> None:
        """The kept head is over its cap now: keep its reservation, no earlier than its cap allows.

        Its startup may run jobs that end by the shadow time (backfill lets them), so the head may be
        over its cap until they end; dropping it for that would give its reservation away.
        """
        shadow = self.capacity.shadow(job, self.now)
        cap = self.max_gpus.get(job.startup)
        releases = sorted((r.ends_at, r.gpus) for r in running if r.startup == job.startup and r.ends_at is not None)
        over = self.in_use.get(job.startup, 0) + job.gpus - (cap or 0)
        cap_at: float | None = None
        for ends_at, gpus in releases:
            over -= gpus
            if over <= 0:
                cap_at = ends_at
                break
        self.turns.back(job.startup)
        if shadow is None or cap_at is None:
            self.never = self.never or job
            return
        # Extra GPUs counted at the earlier node time are no more than at the later start: still safe.
        shadow.start_at = max(shadow.start_at, cap_at)
        self.shadow = shadow

    def try_backfill(self, job: Pending, shadow: Shadow) -> bool:
        """Behind the head: start the job if it fits where it cannot delay the head; whether it started."""
        ends_at = self.now + job.max_runtime_s
        if job.startup == shadow.job.startup and ends_at > shadow.start_at:
            # The head's own startup must still be under its cap when the head starts.
            cap = self.max_gpus.get(job.startup)
            if cap is not None and self.in_use.get(job.startup, 0) + job.gpus + shadow.job.gpus > cap:
                self.turns.back(job.startup)
                return False
        node_id = self.capacity.best_fit(job, shadow, ends_at)
        if node_id is None:
            self.turns.back(job.startup)
            return False
        self.start(job, node_id, backfilled=True)
        return True


def plan(
    pending: Iterable[Pending],
    running: Sequence[Reservation],
    nodes: Sequence[Node],
    usage: Mapping[str, float],
    now: float,
    *,
    max_gpus: Mapping[str, int | None] | None = None,
    weights: Mapping[str, float] | None = None,
    lookahead_s: float = DEFAULT_LOOKAHEAD_S,
    keep_head: str | None = None,
    backfill_depth: int = DEFAULT_BACKFILL_DEPTH,
) -> Plan:
    """The jobs to start now and the head job this pass protects.

    `pending`: the queued jobs, best a `Backlog` the caller keeps between passes (then the pass does
    not sort the queue); any iterable of jobs works. A deployment replica waiting for GPUs can queue
    as a job with `max_runtime_s=math.inf`: it is placed like any job and never backfills past a head.
    `usage`: each startup's decayed weighted GPU-seconds at `now`. `weights`: GPU type -> weight (1 if
    absent). `keep_head`: the head the previous pass returned; it stays first in order until it starts,
    so a reservation once made is never broken by a change in the fair-share order.
    """
    weights = weights or {}
    in_use: dict[str, int] = {}
    endless: dict[str, int] = {}  # a startup's private deployments: GPUs it holds with no end
    for r in running:
        if r.startup is not None:
            in_use[r.startup] = in_use.get(r.startup, 0) + r.gpus
            if r.ends_at is None:
                endless[r.startup] = endless.get(r.startup, 0) + r.gpus
    state = _Pass(
        capacity=Capacity(nodes, running),
        turns=Turns(pending, shares(running, nodes, usage, now, weights=weights, lookahead_s=lookahead_s),
                    first=keep_head),
        in_use=in_use,
        endless=endless,
        now=now,
        max_gpus=max_gpus or {},
        weights=weights,
        lookahead_s=lookahead_s,
    )
    _walk(state, backfill_depth, keep_head, running)
    head = state.shadow.job.id if state.shadow else (state.never.id if state.never else None)
    return Plan(tuple(state.starts), head, state.shadow.start_at if state.shadow else None, state.looked_at)


def _walk(state: _Pass, depth: int, keep_head: str | None, running: Sequence[Reservation]) -> None:
    passed_over = 0
    while passed_over < depth:
        if state.shadow is not None and state.capacity.total_free <= 0:
            return
        job = state.turns.take()
        if job is None:
            return
        state.looked_at += 1
        if state.over_cap(job):
            if job.id == keep_head:
                state.hold_kept_head(job, running)
            elif state.never_under_cap(job):
                state.turns.back(job.startup)  # this job cannot start under the cap: pass it over
            else:
                continue  # the startup is not handed back: it sits the rest of the pass out
            passed_over += 1
            continue
        started = state.try_in_order(job) if state.shadow is None else state.try_backfill(job, state.shadow)
        passed_over += not started

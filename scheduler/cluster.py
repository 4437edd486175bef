"""A model of the scheduler's world over injected time: jobs end, usage accrues, passes start jobs.

The forecast (`scheduler.forecast`) and the simulation (`scheduler.simulation`) both step this one
model, so a forecast is exactly what the simulation does when jobs run to their limits. Time moves
only through `advance`; nothing here sleeps or reads a clock.

Usage is charged as jobs run: between two events the set of running jobs is fixed, so each startup's
usage at the next event is its decayed usage plus the decayed integral of its weighted GPUs
(`fairshare.accrued`), exact rather than sampled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.backlog import Backlog
from scheduler.fairshare import DEFAULT_LOOKAHEAD_S, accrued, decayed
from scheduler.policy import DEFAULT_BACKFILL_DEPTH, plan
from scheduler.records import Node, Pending, Plan, Reservation


class Policy(Protocol):
    """A scheduling pass: shuqi's `plan` with its settings bound, or a policy to compare it with."""

    def __call__(
        self,
        pending: Iterable[Pending],
        running: Sequence[Reservation],
        nodes: Sequence[Node],
        usage: Mapping[str, float],
        now: float,
        keep_head: str | None,
    ) -> Plan: ...


@dataclass(frozen=True)
class FairPolicy:
    """shuqi's pass (`policy.plan`) with its settings."""

    max_gpus: Mapping[str, int | None] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    lookahead_s: float = DEFAULT_LOOKAHEAD_S
    backfill_depth: int = DEFAULT_BACKFILL_DEPTH

    def __call__(
        self,
        pending: Iterable[Pending],
        running: Sequence[Reservation],
        nodes: Sequence[Node],
        usage: Mapping[str, float],
        now: float,
        keep_head: str | None,
    ) -> Plan:
        return plan(
            pending, running, nodes, usage, now, max_gpus=self.max_gpus, weights=self.weights,
            lookahead_s=self.lookahead_s, keep_head=keep_head, backfill_depth=self.backfill_depth,
        )


@dataclass
class Journal:
    """What happened to each job: when it started and ended, where, and the head reservations made."""

    started_at: dict[str, float] = field(default_factory=dict)
    ended_at: dict[str, float] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)
    backfilled: set[str] = field(default_factory=set)
    # Every job that was ever the protected head, with the earliest shadow time any pass gave it.
    head_deadline: dict[str, float] = field(default_factory=dict)
    passes: int = 0


class Cluster:
    """Nodes, running reservations, queued jobs and startups' usage at `now`, stepped by events."""

    def __init__(
        self,
        nodes: Sequence[Node],
        policy: Policy,
        now: float,
        *,
        half_life_s: float,
        weights: Mapping[str, float] | None = None,
        usage: Mapping[str, float] | None = None,
        running: Iterable[Reservation] = (),
        head: str | None = None,
        runtime: Callable[[Pending], float] | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.policy = policy
        self.now = now
        self.half_life_s = half_life_s
        self.usage: dict[str, float] = dict(usage or {})
        self.pending = Backlog()
        self.running: dict[str, Reservation] = {}
        self.head = head
        self.journal = Journal()
        self._runtime = runtime or (lambda job: job.max_runtime_s)
        weights = weights or {}
        self._weight = {n.node_id: weights.get(n.gpu_type, 1.0) for n in nodes}
        self._gpus = sum(n.gpus for n in nodes if n.alive)
        self._ends: list[tuple[float, str]] = []
        self._gpus_in_use = 0
        for r in running:
            self._hold(r, r.ends_at)

    def submit(self, job: Pending) -> None:
        """Queue a job."""
        self.pending.add(job)

    def next_end(self) -> float | None:
        """When the next running job ends (None: none will)."""
        return self._ends[0][0] if self._ends else None

    def advance(self, to: float) -> None:
        """Move time to `to`: usage accrues and every job due to end by then ends."""
        while self._ends and self._ends[0][0] <= to:
            end, job_id = heapq.heappop(self._ends)
            self._accrue(end)
            reservation = self.running.pop(job_id)
            self.journal.ended_at[job_id] = end
            self._gpus_in_use -= reservation.gpus
        self._accrue(to)

    def schedule(self) -> Plan | None:
        """Run a pass at `now` and start what it says; None when no GPU is free and the head is kept."""
        if self.head is not None and self._gpus_in_use >= self._gpus:
            return None  # nothing can start and the kept head stays the head: the pass would change nothing
        result = self.policy(
            self.pending, list(self.running.values()), self.nodes, self.usage, self.now, self.head
        )
        self.journal.passes += 1
        for start in result.starts:
            job = self.pending.discard(start.job_id)
            if job is None:
                raise ValueError(f"the policy started {start.job_id}, which is not queued")
            self.journal.started_at[job.id] = self.now
            self.journal.node_of[job.id] = start.node_id
            if start.backfilled:
                self.journal.backfilled.add(job.id)
            limit_end = self.now + job.max_runtime_s
            actual_end = self.now + min(self._runtime(job), job.max_runtime_s)
            self._hold(Reservation(job.id, job.startup, start.node_id, job.gpus, limit_end), actual_end)
        self.head = result.head if result.head_start_at is not None else None
        if result.head is not None and result.head_start_at is not None:
            deadline = self.journal.head_deadline.get(result.head, result.head_start_at)
            self.journal.head_deadline[result.head] = min(deadline, result.head_start_at)
        return result

    def _hold(self, reservation: Reservation, actual_end: float | None) -> None:
        self.running[reservation.id] = reservation
        self._gpus_in_use += reservation.gpus
        if actual_end is not None:
            heapq.heappush(self._ends, (actual_end, reservation.id))

    def _accrue(self, to: float) -> None:
        if to <= self.now:
            return
        for startup, value in self.usage.items():
            self.usage[startup] = decayed(value, self.now, to, self.half_life_s)
        for r in self.running.values():
            if r.startup is not None:
                rate = r.gpus * self._weight.get(r.node_id, 1.0)
                self.usage[r.startup] = self.usage.get(r.startup, 0.0) + accrued(rate, self.now, to, self.half_life_s)
        self.now = to


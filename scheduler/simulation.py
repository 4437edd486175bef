"""A discrete-event simulation of the scheduler over a trace of jobs, against strict FIFO.

Time jumps from event to event (a job arrives, a job ends); each event runs one pass of the policy
under test, as the service does on each submit and each job end. Jobs run their actual runtime
(never past their limit), and fair-share usage decays and accrues as they run (`scheduler.cluster`).

The report gives GPU utilization, mean and p95 wait, GPU-seconds per startup, Jain's fairness index,
and backfill's head-job delays: every job that was ever the protected head with a shadow time T must
have started by T; a start after T counts as a violation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from scheduler.backfill import Capacity
from scheduler.cluster import Cluster, FairPolicy, Journal, Policy
from scheduler.fairshare import DEFAULT_HALF_LIFE_S
from scheduler.records import Node, Pending, Plan, Reservation, Start


@dataclass(frozen=True)
class TraceJob:
    """A job of a trace: when it is submitted, what it asks for and how long it really runs."""

    id: str
    startup: str
    submitted_at: float
    gpus: int
    gpu_type: str | None
    max_runtime_s: float
    runtime_s: float
    priority: int = 0

    def pending(self) -> Pending:
        """The job as the scheduler sees it in the queue (it does not know the real runtime)."""
        return Pending(self.id, self.startup, self.gpus, self.gpu_type, self.max_runtime_s, self.submitted_at,
                       self.priority)


@dataclass(frozen=True)
class Report:
    """What a run of a trace shows."""

    jobs: int
    utilization: float
    makespan_s: float
    mean_wait_s: float
    p95_wait_s: float
    gpu_seconds: dict[str, float]
    window_s: float
    window_gpu_seconds: dict[str, float]
    jain: float
    backfilled: int
    heads: int
    head_violations: int
    passes: int


def fifo(
    pending: Iterable[Pending],
    running: Sequence[Reservation],
    nodes: Sequence[Node],
    usage: Mapping[str, float],
    now: float,
    keep_head: str | None,
) -> Plan:
    """Strict FIFO for comparison: start jobs in submit order (best fit), stop at the first that does not fit.

    No fair share, no priority, no backfill. A job no node can ever hold is passed over, as shuqi's
    pass does, so that the comparison is about ordering and not about a queue stuck forever.
    """
    capacity = Capacity(nodes, running)
    starts: list[Start] = []
    for job in sorted(pending, key=lambda j: (j.submitted_at, j.id)):
        node_id = capacity.best_fit(job)
        if node_id is not None:
            capacity.take(node_id, job.gpus, now + job.max_runtime_s)
            starts.append(Start(job.id, node_id, False))
        elif capacity.shadow(job, now) is not None:
            return Plan(tuple(starts), job.id, None)
    return Plan(tuple(starts), None, None)


def simulate(
    trace: Sequence[TraceJob],
    nodes: Sequence[Node],
    policy: Policy | None = None,
    *,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    weights: Mapping[str, float] | None = None,
    reservations: Sequence[Reservation] = (),
) -> Journal:
    """Run the trace to its end under `policy` (shuqi's pass by default); what happened to each job."""
    run = Run(trace, nodes, policy, half_life_s=half_life_s, weights=weights, reservations=reservations)
    run.until(math.inf)
    return run.cluster.journal


class Run:
    """A trace being played on a `Cluster`, which can be stopped at any time and looked at."""

    def __init__(
        self,
        trace: Sequence[TraceJob],
        nodes: Sequence[Node],
        policy: Policy | None = None,
        *,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        weights: Mapping[str, float] | None = None,
        reservations: Sequence[Reservation] = (),
    ) -> None:
        weights = weights or {}
        runtimes = {job.id: job.runtime_s for job in trace}
        self._arrivals = sorted(trace, key=lambda j: (j.submitted_at, j.id))
        self._next = 0
        start = self._arrivals[0].submitted_at if self._arrivals else 0.0
        self.cluster = Cluster(
            nodes, policy or FairPolicy(weights=weights), start, half_life_s=half_life_s, weights=weights,
            running=reservations, runtime=lambda job: runtimes[job.id],
        )
        self._due = bool(self._arrivals)  # a pass is due at `cluster.now`

    def until(self, stop: float) -> None:
        """Play every event before `stop`, then move to `stop` with its arrivals queued but no pass run yet."""
        cluster = self.cluster
        while True:
            if self._due:
                cluster.schedule()
                self._due = False
            next_end = cluster.next_end()
            arrival = self._arrivals[self._next].submitted_at if self._next < len(self._arrivals) else math.inf
            when = min(arrival, math.inf if next_end is None else next_end)
            if when == math.inf or when >= stop:
                break
            self._step(when)
        if stop != math.inf:
            self._step(stop)

    def _step(self, when: float) -> None:
        self.cluster.advance(when)
        while self._next < len(self._arrivals) and self._arrivals[self._next].submitted_at <= when:
            self.cluster.submit(self._arrivals[self._next].pending())
            self._next += 1
        self._due = True


def report(trace: Sequence[TraceJob], nodes: Sequence[Node], journal: Journal) -> Report:
    """Utilization, waits, GPU-seconds per startup, fairness and head delays of a finished run."""
    done = [job for job in trace if job.id in journal.ended_at]
    first = min((job.submitted_at for job in trace), default=0.0)
    last = max(journal.ended_at.values(), default=first)
    capacity = sum(node.gpus for node in nodes if node.alive)
    busy = sum(job.gpus * (journal.ended_at[job.id] - journal.started_at[job.id]) for job in done)
    waits = sorted(journal.started_at[job.id] - job.submitted_at for job in trace if job.id in journal.started_at)
    per_startup: dict[str, float] = {}
    for job in done:
        per_startup[job.startup] = per_startup.get(job.startup, 0.0) + job.gpus * (
            journal.ended_at[job.id] - journal.started_at[job.id])
    window_end = _contended_until(trace, journal)
    in_window = _gpu_seconds_between(trace, journal, first, window_end)
    return Report(
        jobs=len(trace),
        utilization=busy / (capacity * (last - first)) if last > first and capacity else 0.0,
        makespan_s=last - first,
        mean_wait_s=sum(waits) / len(waits) if waits else 0.0,
        p95_wait_s=_percentile(waits, 0.95),
        gpu_seconds=per_startup,
        window_s=window_end - first,
        window_gpu_seconds=in_window,
        jain=jain(list(in_window.values())),
        backfilled=len(journal.backfilled),
        heads=len(journal.head_deadline),
        head_violations=sum(
            1 for job_id, deadline in journal.head_deadline.items()
            if journal.started_at.get(job_id, math.inf) > deadline
        ),
        passes=journal.passes,
    )


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one has everything."""
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]


def _contended_until(trace: Sequence[TraceJob], journal: Journal) -> float:
    """When the first startup ran out of queued work: its last job started. Until then all compete."""
    last_start: dict[str, float] = {}
    for job in trace:
        started = journal.started_at.get(job.id, math.inf)
        last_start[job.startup] = max(last_start.get(job.startup, -math.inf), started)
    return min(last_start.values(), default=0.0)


def _gpu_seconds_between(trace: Sequence[TraceJob], journal: Journal, since: float, until: float) -> dict[str, float]:
    out = {job.startup: 0.0 for job in trace}
    for job in trace:
        if job.id in journal.started_at:
            end = journal.ended_at.get(job.id, until)
            overlap = min(end, until) - max(journal.started_at[job.id], since)
            out[job.startup] += job.gpus * max(overlap, 0.0)
    return out


def synthetic_trace(
    seed: int, *, startups: int = 24, jobs: int = 2000, gpus: int = 64, load: float = 1.3,
    gpu_types: Sequence[str] = ("a100",), t0: float = 1_800_000_000.0,
) -> list[TraceJob]:
    """A seeded mixed trace: 1-8 GPUs, 10 min to 4 h limits, runs of 20-100% of the limit, Poisson arrivals.

    Startups' shares of the jobs are skewed (a few heavy users, a long tail); `load` is the offered
    GPU-time over the cluster's capacity across the arrival span, so above 1 a queue builds up.
    """
    rng = random.Random(seed)
    sizes, size_weights = (1, 2, 4, 8), (0.4, 0.25, 0.2, 0.15)
    limits = (600.0, 1800.0, 3600.0, 7200.0, 14400.0)
    names = [f"s{i:02d}" for i in range(startups)]
    popularity = [1.0 / (i + 1) ** 0.8 for i in range(startups)]
    shapes = []
    for _ in range(jobs):
        limit = rng.choice(limits)
        runtime = limit if rng.random() < 0.15 else round(limit * rng.uniform(0.2, 1.0), 3)
        gpu_type = rng.choice(list(gpu_types)) if gpu_types and rng.random() < 0.15 else None
        shapes.append((rng.choices(sizes, size_weights)[0], gpu_type, limit, runtime))
    work = sum(size * runtime for size, _, _, runtime in shapes)
    mean_gap = work / (load * gpus) / jobs
    out, t = [], t0
    for i, (size, gpu_type, limit, runtime) in enumerate(shapes):
        t += rng.expovariate(1.0 / mean_gap)
        startup = rng.choices(names, popularity)[0]
        out.append(TraceJob(f"j{i:05d}", startup, round(t, 3), size, gpu_type, limit, runtime))
    return out


def equal_demand_trace(seed: int, *, startups: int = 4, jobs_each: int = 150, t0: float = 1_800_000_000.0
                       ) -> list[TraceJob]:
    """Startups with the same jobs (sizes, limits, runtimes), each submitting its backlog at once, one after another.

    FIFO serves the first startup's whole backlog first; a fair policy shares the cluster meanwhile.
    """
    rng = random.Random(seed)
    shapes = []
    for _ in range(jobs_each):
        limit = rng.choice((600.0, 1800.0, 3600.0))
        shapes.append((rng.choice((1, 1, 2, 4)), limit, round(limit * rng.uniform(0.3, 1.0), 3)))
    out = []
    for s in range(startups):
        order = list(shapes)
        rng.shuffle(order)
        for i, (size, limit, runtime) in enumerate(order):
            out.append(TraceJob(f"e{s}-{i:04d}", f"eq{s}", t0 + s + i * 0.001, size, None, limit, runtime))
    return out

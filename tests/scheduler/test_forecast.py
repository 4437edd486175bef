"""Queue positions and estimated starts: exact when jobs run to their limits and nothing new arrives."""

from __future__ import annotations

import random

import pytest

from scheduler.cluster import FairPolicy
from scheduler.forecast import estimate, positions
from scheduler.records import Node, Reservation
from scheduler.simulation import Run, TraceJob
from tests.scheduler.factories import NOW, job

DAY = 86400.0


def _trace(seed: int, jobs: int) -> list[TraceJob]:
    rng = random.Random(seed)
    out = []
    for i in range(jobs):
        limit = rng.choice([300.0, 900.0, 3600.0])
        out.append(TraceJob(f"j{i:03d}", f"s{rng.randrange(5)}", NOW + rng.uniform(0, 1800),
                            rng.choice([1, 1, 2, 4, 8]), rng.choice([None, None, None, "a100"]), limit, limit,
                            rng.randrange(2)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_estimated_starts_are_the_starts_when_jobs_run_to_their_limits(seed: int) -> None:
    nodes = [Node("n0", "default", 8), Node("n1", "default", 4), Node("a0", "a100", 8)]
    deployment = Reservation("replica", "s1", "n1", 2, None)
    weights = {"a100": 2.5}
    caps: dict[str, int | None] = {"s0": 6, "s2": 8}
    trace = _trace(seed, 160)
    run = Run(trace, nodes, FairPolicy(max_gpus=caps, weights=weights), half_life_s=DAY, weights=weights,
              reservations=[deployment])
    run.until(NOW + 2000.0)  # every job submitted, some running, a queue; the pass at this instant not yet run
    cluster = run.cluster
    queued = list(cluster.pending)
    assert len(queued) > 50 and len(cluster.running) > 3
    forecast = estimate(queued, list(cluster.running.values()), nodes, cluster.usage, cluster.now, half_life_s=DAY,
                        max_gpus=caps, weights=weights, keep_head=cluster.head)
    run.until(float("inf"))
    assert {job.id: forecast[job.id].start_at for job in queued} == {
        job.id: cluster.journal.started_at.get(job.id) for job in queued
    }
    assert sorted(e.position for e in forecast.values()) == list(range(1, len(queued) + 1))


def test_positions_alternate_between_startups_with_equal_usage() -> None:
    pending = [job(f"{s}{i}", s, at=NOW - 100 + i) for s in "ab" for i in range(3)]
    order = positions(pending, [], [Node("n0", "default", 8)], {}, NOW)
    assert sorted(order, key=order.__getitem__) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_jobs_past_the_limit_get_a_position_but_no_start() -> None:
    nodes = [Node("n0", "default", 2)]
    busy = [Reservation("r", "x", "n0", 2, NOW + 600.0)]
    pending = [job(f"j{i}", "a", at=NOW - 100 + i, runtime=600.0) for i in range(5)]
    forecast = estimate(pending, busy, nodes, {}, NOW, limit=3)
    assert [forecast[f"j{i}"].start_at for i in range(5)] == [NOW + 600, NOW + 600, NOW + 1200, None, None]
    assert [forecast[f"j{i}"].beyond_limit for i in range(5)] == [False, False, False, True, True]
    assert forecast["j4"].position == 5


def test_a_job_no_node_will_ever_hold_has_no_estimated_start() -> None:
    nodes = [Node("n0", "default", 8)]
    forever = [Reservation("replica", None, "n0", 8, None)]
    forecast = estimate([job("j")], forever, nodes, {}, NOW)
    assert forecast["j"].start_at is None and forecast["j"].position == 1

"""The policy over whole traces: backfill never delays the head, equal demand gets equal GPU time,
utilization beats strict FIFO, and usage is charged as jobs run."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cluster import Cluster, FairPolicy
from scheduler.records import Node, Reservation
from scheduler.simulation import TraceJob, equal_demand_trace, fifo, jain, report, simulate, synthetic_trace
from tests.scheduler.factories import NOW, job

DAY = 86400.0
CLUSTER = [Node(f"n{i}", "a100" if i >= 6 else "default", 8) for i in range(8)]


def test_jains_index() -> None:
    assert jain([5.0, 5.0, 5.0]) == 1.0
    assert jain([9.0, 0.0, 0.0]) == 1 / 3
    assert math.isclose(jain([1.0, 3.0]), 0.8)


def test_usage_is_charged_as_jobs_run_and_decays() -> None:
    nodes = [Node("n0", "h100", 8)]
    cluster = Cluster(nodes, FairPolicy(), NOW, half_life_s=1e12, weights={"h100": 2.0})
    cluster.submit(job("j", "a", gpus=4, runtime=3600.0))
    cluster.schedule()
    cluster.advance(NOW + 1800.0)
    assert math.isclose(cluster.usage["a"], 4 * 2.0 * 1800.0, rel_tol=1e-6)
    cluster.advance(NOW + 7200.0)  # the job ends at its limit: an hour's weighted GPU time, no more
    assert math.isclose(cluster.usage["a"], 4 * 2.0 * 3600.0, rel_tol=1e-6)
    cluster.half_life_s = 3600.0
    cluster.advance(NOW + 10800.0)
    assert math.isclose(cluster.usage["a"], 4 * 2.0 * 3600.0 / 2, rel_tol=1e-6)


def test_equal_demand_gets_equal_gpu_time_where_fifo_serves_the_first_comer() -> None:
    for startups in (2, 5):
        trace = equal_demand_trace(7, startups=startups, jobs_each=120)
        fair = report(trace, CLUSTER, simulate(trace, CLUSTER, half_life_s=DAY))
        first_come = report(trace, CLUSTER, simulate(trace, CLUSTER, fifo, half_life_s=DAY))
        assert fair.jain >= 0.99, fair.window_gpu_seconds
        assert first_come.jain < 0.9
        # The fairness window is most of the run, not a moment at its start.
        assert fair.window_s > 0.8 * fair.makespan_s


def test_shuqi_uses_the_gpus_better_than_strict_fifo_and_never_delays_a_head() -> None:
    trace = synthetic_trace(3, startups=20, jobs=800)
    fair = report(trace, CLUSTER, simulate(trace, CLUSTER, half_life_s=DAY))
    first_come = report(trace, CLUSTER, simulate(trace, CLUSTER, fifo, half_life_s=DAY))
    assert fair.utilization > first_come.utilization
    assert fair.mean_wait_s < first_come.mean_wait_s
    assert fair.backfilled > 0 and fair.heads > 0
    assert fair.head_violations == 0
    assert sum(fair.gpu_seconds.values()) == sum(first_come.gpu_seconds.values())


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Node], list[TraceJob], list[Reservation], dict[str, int | None]]:
    nodes = [
        Node(f"n{i}", draw(st.sampled_from(["default", "a100"])), draw(st.sampled_from([1, 2, 4, 8])))
        for i in range(draw(st.integers(1, 4)))
    ]
    deployments = [
        Reservation(f"d{i}", draw(st.sampled_from([None, "s0"])), node.node_id, draw(st.integers(1, node.gpus)), None)
        for i, node in enumerate(nodes) if draw(st.integers(0, 4)) == 0
    ]
    jobs = []
    for i in range(draw(st.integers(1, 40))):
        limit = float(draw(st.sampled_from([60, 300, 900, 3600])))
        jobs.append(TraceJob(
            f"j{i}", f"s{draw(st.integers(0, 3))}", NOW + draw(st.integers(0, 3600)), draw(st.integers(1, 8)),
            draw(st.sampled_from([None, None, "default", "a100"])), limit,
            limit * draw(st.sampled_from([0.1, 0.5, 0.99, 1.0])), draw(st.integers(0, 2)),
        ))
    caps = {f"s{i}": draw(st.sampled_from([None, None, 4, 8, 12])) for i in range(4)}
    return nodes, jobs, deployments, caps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([60.0, 3600.0, DAY]))
def test_backfill_never_delays_the_head(
    scenario: tuple[list[Node], list[TraceJob], list[Reservation], dict[str, int | None]], half_life: float
) -> None:
    nodes, jobs, deployments, caps = scenario
    journal = simulate(jobs, nodes, FairPolicy(max_gpus=caps), half_life_s=half_life, reservations=deployments)
    result = report(jobs, nodes, journal)
    assert result.head_violations == 0
    for j in jobs:
        # Every job that could run alone on some node under its startup's cap did run.
        free_somewhere = any(
            n.gpus - sum(d.gpus for d in deployments if d.node_id == n.node_id) >= j.gpus
            and j.gpu_type in (None, n.gpu_type) for n in nodes
        )
        capped = caps[j.startup] is not None and j.gpus + sum(
            d.gpus for d in deployments if d.startup == j.startup) > (caps[j.startup] or 0)
        assert (j.id in journal.ended_at) == (free_somewhere and not capped)

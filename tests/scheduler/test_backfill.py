"""Placement (GPU type, node size, best fit, deployments) and EASY backfill around the head job."""

from __future__ import annotations

import math

from scheduler.policy import plan
from scheduler.records import Node, Start
from tests.scheduler.factories import NOW, job, nodes, running

HOUR = 3600.0


def test_a_job_runs_on_a_node_of_the_type_it_names() -> None:
    cluster = nodes(1, 8) + nodes(1, 2, "a100", prefix="a")
    result = plan([job("j", gpus=2, gpu_type="a100"), job("k", gpus=1, at=NOW)], [], cluster, {}, NOW)
    assert result.starts == (Start("j", "a0", False), Start("k", "n0", False))


def test_a_job_that_names_an_unknown_type_never_starts_and_blocks_nothing() -> None:
    result = plan([job("j", gpu_type="tpu"), job("k", at=NOW)], [], nodes(1), {}, NOW)
    assert result.starts == (Start("k", "n0", False),)
    assert (result.head, result.head_start_at) == ("j", None)


def test_a_job_never_spans_nodes() -> None:
    cluster = nodes(2, 8)
    busy = [running("r0", "n0", 4, ends_in=HOUR), running("r1", "n1", 4, ends_in=2 * HOUR)]
    result = plan([job("big", gpus=8)], busy, cluster, {}, NOW)
    # Eight GPUs are free in all, but not on one node: it waits for n0.
    assert result.starts == ()
    assert (result.head, result.head_start_at) == ("big", NOW + HOUR)


def test_a_job_larger_than_every_node_never_starts() -> None:
    result = plan([job("huge", gpus=16)], [], nodes(4, 8), {}, NOW)
    assert (result.starts, result.head, result.head_start_at) == ((), "huge", None)


def test_best_fit_keeps_the_large_hole_whole() -> None:
    cluster = nodes(3, 8)
    busy = [running("r0", "n0", 6), running("r1", "n1", 4)]
    result = plan([job("small", gpus=2), job("big", gpus=8, at=NOW)], busy, cluster, {}, NOW)
    assert result.starts == (Start("small", "n0", False), Start("big", "n2", False))


def test_dead_nodes_are_not_used() -> None:
    cluster = [Node("n0", "default", 8, alive=False), Node("n1", "default", 2)]
    result = plan([job("j", gpus=4), job("k", gpus=2, at=NOW)], [], cluster, {}, NOW)
    # j fits no alive node, so there is no reservation to protect: k starts as if in order.
    assert result.starts == (Start("k", "n1", False),)
    assert (result.head, result.head_start_at) == ("j", None)


def test_a_deployment_holds_its_gpus_with_no_end() -> None:
    cluster = nodes(1, 8)
    deploy = running("replica-1", "n0", 6, ends_in=None, startup=None)
    result = plan([job("j", gpus=4), job("k", gpus=2, at=NOW, runtime=100 * HOUR)], [deploy], cluster, {}, NOW)
    # j can never have 4 GPUs there, so it protects nothing and k may take the last two for 100 hours.
    assert result.starts == (Start("k", "n0", False),)
    assert (result.head, result.head_start_at) == ("j", None)


def test_a_short_job_backfills_before_the_shadow_time_and_a_long_one_does_not() -> None:
    cluster = nodes(1, 8)
    busy = [running("r0", "n0", 4, ends_in=HOUR)]
    pending = [job("head", gpus=8, at=NOW - 900), job("long", gpus=2, at=NOW - 800, runtime=2 * HOUR),
               job("short", gpus=2, at=NOW - 700, runtime=HOUR)]
    result = plan(pending, busy, cluster, {}, NOW)
    assert result.starts == (Start("short", "n0", True),)
    assert (result.head, result.head_start_at) == ("head", NOW + HOUR)


def test_a_long_job_backfills_into_gpus_the_head_leaves_over() -> None:
    cluster = nodes(1, 8)
    busy = [running("r0", "n0", 4, ends_in=HOUR)]
    pending = [job("head", gpus=6, at=NOW - 900)] + [job(f"long{i}", gpus=2, at=NOW - 800 + i, runtime=9 * HOUR)
                                                     for i in range(2)]
    result = plan(pending, busy, cluster, {}, NOW)
    # At the shadow time the head needs 6 of 8: one 2-GPU job may stay past it, the second may not.
    assert result.starts == (Start("long0", "n0", True),)
    assert result.head_start_at == NOW + HOUR


def test_backfill_goes_to_a_node_the_head_does_not_need() -> None:
    cluster = nodes(2, 8)
    busy = [running("r0", "n0", 4, ends_in=HOUR), running("r1", "n1", 6, ends_in=5 * HOUR)]
    pending = [job("head", gpus=8, at=NOW - 900), job("long", gpus=2, at=NOW - 800, runtime=9 * HOUR)]
    result = plan(pending, busy, cluster, {}, NOW)
    # n0 is the best fit for "long" by free GPUs, but n0 is where the head starts in an hour.
    assert result.starts == (Start("long", "n1", True),)
    assert result.head_start_at == NOW + HOUR


def test_the_kept_head_stays_first_when_fair_share_would_reorder() -> None:
    cluster = nodes(1, 8)
    busy = [running("r0", "n0", 7, ends_in=HOUR)]
    pending = [job("a-head", "a", gpus=4), job("b1", "b", gpus=4)]
    usage = {"a": 9e9, "b": 0.0}
    assert plan(pending, busy, cluster, usage, NOW).head == "b1"
    assert plan(pending, busy, cluster, usage, NOW, keep_head="a-head").head == "a-head"


def test_the_heads_startup_keeps_room_under_its_cap_for_the_head() -> None:
    cluster = nodes(2, 8)
    busy = [running("r0", "n0", 8, ends_in=HOUR)]
    pending = [job("head", "a", gpus=8, at=NOW - 900), job("a-long", "a", gpus=2, at=NOW - 800, runtime=9 * HOUR),
               job("a-short", "a", gpus=2, at=NOW - 700, runtime=HOUR), job("b-long", "b", 2, runtime=9 * HOUR)]
    busy.append(running("r1", "n1", 8, ends_in=2 * HOUR))
    cluster.append(Node("n2", "default", 4))
    result = plan(pending, busy, cluster, {"b": 1e9}, NOW, max_gpus={"a": 9}, keep_head="head")
    # a may run 9 GPUs: 8 for the head in an hour, so only a job done by then may backfill for a.
    assert {s.job_id for s in result.starts} == {"a-short", "b-long"}
    assert all(s.backfilled for s in result.starts)


def test_a_replica_queued_with_no_end_is_placed_only_where_the_head_does_not_need_it() -> None:
    cluster = nodes(2, 8)
    busy = [running("r0", "n0", 4, ends_in=HOUR), running("r1", "n1", 8, ends_in=2 * HOUR)]
    pending = [job("head", gpus=8, at=NOW - 900), job("replica", gpus=2, at=NOW - 800, runtime=math.inf)]
    first = plan(pending, busy, cluster, {}, NOW)
    assert first.starts == () and first.head_start_at == NOW + HOUR
    # On a node of its own the replica takes two GPUs for good: an 8-GPU job there can never start.
    second = plan([pending[1], job("next", gpus=8)], [running("r1", "n0", 6, ends_in=HOUR)], nodes(1), {}, NOW)
    assert second.starts == (Start("replica", "n0", False),)
    assert (second.head, second.head_start_at) == ("next", None)


def test_a_pass_looks_at_a_bounded_part_of_a_long_queue() -> None:
    cluster = nodes(2, 8)
    busy = [running("r0", "n0", 7, ends_in=HOUR), running("r1", "n1", 8, ends_in=HOUR)]
    queue = [job(f"j{i:04d}", f"s{i % 7}", gpus=2, at=NOW - 5000 + i) for i in range(5000)]
    deep = plan(queue, busy, cluster, {}, NOW, backfill_depth=100)
    # No queued job fits the one free GPU: the head is found, then backfill gives up after 100 tries.
    assert deep.starts == () and deep.head is not None and deep.looked_at == 100
    # Once the last free GPU is taken and the head is known, the pass stops looking.
    full = plan([job("one", "a", at=NOW - 9000), *queue], busy, cluster, {}, NOW)
    assert full.starts == (Start("one", "n0", False),) and full.looked_at == 2

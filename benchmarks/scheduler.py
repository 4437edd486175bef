"""Scheduler benchmark: the cost of a scheduling pass, and shuqi's policy against strict FIFO on a trace.

    .venv/bin/python benchmarks/scheduler.py --json [--out FILE] [--section pass|trace]...

Sections (each a function of the parsed arguments returning its figures and its `targets`):

- `pass`: one `policy.plan` pass over 1,000 / 10,000 / 100,000 queued jobs from 100 startups on 64
  logical GPUs (8 nodes of 8, two GPU types), the cluster mostly busy (0-2 GPUs free per node, so a
  few jobs start, a large one becomes the head and backfill is tried). Medians over several seeded
  clusters and repetitions, wall time on this shared machine. `backlog` is the service's path (the
  queue kept in a `Backlog` between passes); `list` is a cold pass from an unsorted list (it sorts the
  queue first), as after a leader takeover. Also the cost of keeping the backlog (add, discard) and of
  `forecast.estimate`.
- `submit`: `POST /v1/jobs` -> the job RUNNING in Ray, through the gateway and the scheduler, against Ray's
  own `submit_job` -> RUNNING, interleaved on one Ray head (`benchmarks/_submit.py`).
- `trace`: one seeded synthetic trace (mixed sizes 1-8 GPUs, 10 min to 4 h limits, runs of 20-100% of
  the limit, 24 startups with skewed demand, offered load above capacity) through shuqi's policy and
  strict FIFO in the same run, and an equal-demand experiment (startups with identical jobs, each
  submitting its backlog at once, one after another).

A new section is one more entry in `SECTIONS`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# This file has the name of the package it measures: run as a script, its own directory comes first on
# sys.path and `import scheduler` would import this file instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from scheduler.backlog import Backlog  # noqa: E402
from scheduler.fairshare import DEFAULT_HALF_LIFE_S  # noqa: E402
from scheduler.forecast import estimate  # noqa: E402
from scheduler.policy import plan  # noqa: E402
from scheduler.records import Node, Pending, Reservation  # noqa: E402
from scheduler.simulation import Report, equal_demand_trace, fifo, report, simulate, synthetic_trace  # noqa: E402

T0 = 1_800_000_000.0
SIZES = (1_000, 10_000, 100_000)
STARTUPS = 100
PASS_TARGET_MS = 50.0
GROWTH_TARGET = 12.0


def _check(name: str, value: float | None, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"target": name, "value": value, "limit": limit, "met": met}


def cluster(seed: int, *, full_depth: bool = False) -> tuple[list[Node], list[Reservation]]:
    """8 nodes of 8 GPUs (two of type a100), each with 0-2 GPUs free (1 for `full_depth`), jobs ending within 4 h."""
    rng = random.Random(seed)
    nodes = [Node(f"n{i}", "a100" if i >= 6 else "default", 8) for i in range(8)]
    running: list[Reservation] = []
    for node in nodes:
        free = node.gpus - (1 if full_depth else rng.choice((0, 1, 1, 2)))
        while free > 0:
            gpus = min(rng.choice((1, 2, 4)), free)
            running.append(Reservation(f"r{len(running)}", f"s{rng.randrange(STARTUPS)}", node.node_id, gpus,
                                       T0 + rng.uniform(60, 4 * 3600)))
            free -= gpus
    return nodes, running


def queue(seed: int, size: int, *, full_depth: bool = False) -> tuple[list[Pending], dict[str, float]]:
    """`size` queued jobs from 100 startups (1-8 GPUs, 2-8 for `full_depth`, some typed, some prioritized)."""
    rng = random.Random(seed)
    sizes = (2, 4, 8) if full_depth else (1, 2, 4, 8)
    jobs = [
        Pending(f"j{i}", f"s{rng.randrange(STARTUPS)}", rng.choices(sizes, (0.4, 0.25, 0.2, 0.15)[-len(sizes):])[0],
                rng.choice((None, None, None, None, None, None, "a100", "default")),
                rng.choice((600.0, 1800.0, 3600.0, 7200.0, 14400.0)), T0 - rng.uniform(0, 86400),
                rng.choice((0, 0, 0, 1)))
        for i in range(size)
    ]
    return jobs, {f"s{i}": rng.uniform(0, 1e6) for i in range(STARTUPS)}


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _one_size(size: int, scenarios: int, repeat: int, *, full_depth: bool = False) -> dict[str, Any]:
    backlog_ms, list_ms, starts, backfilled, looked = [], [], [], [], []
    add_us, discard_us, estimate_ms = [], [], []
    for seed in range(scenarios):
        nodes, running = cluster(seed, full_depth=full_depth)
        jobs, usage = queue(seed, size, full_depth=full_depth)
        backlog = Backlog(jobs)
        result = plan(backlog, running, nodes, usage, T0)
        starts.append(len(result.starts))
        backfilled.append(sum(s.backfilled for s in result.starts))
        looked.append(result.looked_at)
        backlog_ms.append(_median_ms(partial(plan, backlog, running, nodes, usage, T0), repeat))
        list_ms.append(_median_ms(partial(plan, jobs, running, nodes, usage, T0), max(3, repeat // 3)))
        extra = queue(seed + 1000, 200)[0]
        extra = [Pending(f"x{j.id}", j.startup, j.gpus, j.gpu_type, j.max_runtime_s, j.submitted_at, j.priority)
                 for j in extra]
        start = time.perf_counter()
        for job in extra:
            backlog.add(job)
        add_us.append((time.perf_counter() - start) / len(extra) * 1e6)
        start = time.perf_counter()
        for job in extra:
            backlog.discard(job.id)
        discard_us.append((time.perf_counter() - start) / len(extra) * 1e6)
        if seed == 0 and size <= 10_000 and not full_depth:
            for limit, repeats in ((100, 3), (1000, 1)):
                forecast = partial(estimate, backlog, running, nodes, usage, T0, limit=limit)
                estimate_ms.append(_median_ms(forecast, repeats))
    out: dict[str, Any] = {
        "jobs": size,
        "backlog_pass_ms": round(statistics.median(backlog_ms), 3),
        "backlog_pass_ms_by_cluster": [round(v, 3) for v in backlog_ms],
        "list_pass_ms": round(statistics.median(list_ms), 3),
        "backlog_add_us": round(statistics.median(add_us), 2),
        "backlog_discard_us": round(statistics.median(discard_us), 2),
        "starts_median": statistics.median(starts),
        "backfilled_median": statistics.median(backfilled),
        "looked_at_median": statistics.median(looked),
    }
    if estimate_ms:
        out["estimate_ms_limit_100"], out["estimate_ms_limit_1000"] = (round(v, 1) for v in estimate_ms)
    return out


def pass_section(args: argparse.Namespace) -> dict[str, Any]:
    """Time one scheduling pass at each queue size."""
    by_size = {str(size): _one_size(size, args.scenarios, args.repeat) for size in SIZES}
    # The worst case of a pass: no queued job fits the free GPUs, so backfill looks at its full depth.
    worst = {str(size): _one_size(size, args.scenarios, args.repeat, full_depth=True) for size in SIZES}
    p10k, p100k = by_size["10000"], by_size["100000"]
    growth = round(p100k["backlog_pass_ms"] / p10k["backlog_pass_ms"], 2)
    cold_growth = round(p100k["list_pass_ms"] / p10k["list_pass_ms"], 2)
    return {
        "gpus": 64,
        "startups": STARTUPS,
        "sizes": by_size,
        "full_backfill_depth": worst,
        "growth_100k_over_10k": growth,
        "cold_growth_100k_over_10k": cold_growth,
        "targets": [
            _check("pass over 10,000 queued jobs, median (ms)", p10k["backlog_pass_ms"], PASS_TARGET_MS),
            _check("pass over 10,000 queued jobs, full backfill depth, median (ms)",
                   worst["10000"]["backlog_pass_ms"], PASS_TARGET_MS),
            _check("pass over 100,000 / over 10,000 (×)", growth, GROWTH_TARGET),
            _check("cold pass (unsorted list) over 10,000, median (ms)", p10k["list_pass_ms"], PASS_TARGET_MS),
        ],
    }


def _figures(result: Report) -> dict[str, Any]:
    return {
        "jobs": result.jobs,
        "utilization": round(result.utilization, 4),
        "makespan_h": round(result.makespan_s / 3600, 2),
        "mean_wait_min": round(result.mean_wait_s / 60, 1),
        "p95_wait_min": round(result.p95_wait_s / 60, 1),
        "jain_contended_window": round(result.jain, 4),
        "contended_window_h": round(result.window_s / 3600, 2),
        "backfilled": result.backfilled,
        "heads": result.heads,
        "head_violations": result.head_violations,
        "passes": result.passes,
    }


def _run_both(trace: Any, nodes: list[Node], half_life_s: float) -> dict[str, Any]:
    out = {}
    for name, policy in (("shuqi", None), ("fifo", fifo)):
        start = time.process_time()
        result = report(trace, nodes, simulate(trace, nodes, policy, half_life_s=half_life_s))
        out[name] = _figures(result) | {"simulation_cpu_s": round(time.process_time() - start, 2)}
    return out


def trace_section(args: argparse.Namespace) -> dict[str, Any]:
    """shuqi against strict FIFO on a mixed trace and on equal demand."""
    nodes, _ = cluster(0)
    half_life = DEFAULT_HALF_LIFE_S
    mixed = synthetic_trace(args.seed, startups=24, jobs=args.trace_jobs, gpus=64, load=1.3)
    result: dict[str, Any] = {"seed": args.seed, "half_life_s": half_life, "nodes": "8 x 8 GPUs (2 of type a100)",
                              "mixed": _run_both(mixed, nodes, half_life), "equal_demand": {}}
    for startups in (2, 4, 8):
        equal = equal_demand_trace(args.seed, startups=startups, jobs_each=args.equal_jobs)
        result["equal_demand"][str(startups)] = _run_both(equal, nodes, half_life)
    mix = result["mixed"]
    equal_jain = [r["shuqi"]["jain_contended_window"] for r in result["equal_demand"].values()]
    violations = [mix["shuqi"]["head_violations"]] + [
        r["shuqi"]["head_violations"] for r in result["equal_demand"].values()]
    result["targets"] = [
        {"target": "utilization, mixed trace: shuqi above FIFO's", "value": mix["shuqi"]["utilization"],
         "limit": mix["fifo"]["utilization"], "met": mix["shuqi"]["utilization"] > mix["fifo"]["utilization"]},
        _check("Jain's index, equal demand, worst of 2/4/8 startups", min(equal_jain), 0.99, at_least=True),
        _check("head jobs started after their shadow time (backfill delays)", max(violations), 0),
    ]
    return result


def submit_section(args: argparse.Namespace) -> dict[str, Any]:
    """POST /v1/jobs -> RUNNING in Ray through shuqi, against Ray's own submit_job -> RUNNING (same head)."""
    # The packages first: this directory also holds gateway.py and scheduler.py, which must not shadow them.
    import gateway.app
    import gateway.server  # noqa: F401
    import scheduler.run  # noqa: F401

    sys.path.append(str(Path(__file__).resolve().parent))
    from _submit import submit_to_running

    result = submit_to_running(args.submit_runs)
    result["targets"] = [_check("shuqi / Ray submit -> RUNNING, ratio of medians", result["ratio_of_medians"], 1.2)]
    return result


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "pass": pass_section,
    "trace": trace_section,
    "submit": submit_section,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections (all by default) and return the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--section", action="append", choices=sorted(SECTIONS), help="run only this (repeatable)")
    parser.add_argument("--repeat", type=int, default=15, help="timed passes per cluster and size")
    parser.add_argument("--scenarios", type=int, default=5, help="seeded clusters and queues per size")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--trace-jobs", type=int, default=3000)
    parser.add_argument("--equal-jobs", type=int, default=200, help="jobs per startup in the equal-demand runs")
    parser.add_argument("--submit-runs", type=int, default=10, help="interleaved submits each way (section submit)")
    args = parser.parse_args(argv)
    report_: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": os.getloadavg()[0],
            "gc_enabled": gc.isenabled(),
        },
        "sections": {},
    }
    for name in args.section or list(SECTIONS):
        report_["sections"][name] = SECTIONS[name](args)
    report_["meta"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    report_["targets"] = [t | {"section": n} for n, s in report_["sections"].items() for t in s.get("targets", [])]
    text = json.dumps(report_) if args.json else json.dumps(report_, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report_, indent=2) + "\n")
    print(text)
    return report_


if __name__ == "__main__":
    main()

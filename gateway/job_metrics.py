"""Job and GPU gauges read from the store at scrape time, so every replica reports the same figures."""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import GaugeMetricFamily, Metric

from vouchers.job_rules import NodeInfo
from vouchers.jobs import Job, JobStatus


def job_families(active: list[Job], nodes: list[NodeInfo] | None, now: float) -> list[Metric]:
    """`shuqi_jobs` (QUEUED and RUNNING), `shuqi_job_oldest_queued_seconds`, `shuqi_gpus` by node and state."""
    jobs = GaugeMetricFamily("shuqi_jobs", "Jobs waiting or running, by status", labels=["status"])
    counts = Counter(j.status for j in active)
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        jobs.add_metric([status.value], counts.get(status, 0))
    queued = [j.queued_at for j in active if j.status is JobStatus.QUEUED]
    oldest = GaugeMetricFamily("shuqi_job_oldest_queued_seconds",
                               "How long the oldest QUEUED job has waited (0 when none waits)")
    oldest.add_metric([], max(0.0, now - min(queued)) if queued else 0.0)
    gpus = GaugeMetricFamily("shuqi_gpus", "GPUs per node: total, and used by running jobs",
                             labels=["node", "gpu_type", "state"])
    used: Counter[str] = Counter()
    for j in active:
        if j.status is JobStatus.RUNNING and j.node_id:
            used[j.node_id] += j.gpus
    for n in nodes or []:
        if n.alive:
            gpus.add_metric([n.node_id, n.gpu_type, "total"], n.gpus)
            gpus.add_metric([n.node_id, n.gpu_type, "used"], used.get(n.node_id, 0))
    return [jobs, oldest, gpus]

"""The scheduler's own metrics (this process): pass time, leadership, queue waits. Job and GPU counts are
read from the store at scrape time by every gateway (`gateway.job_metrics`), like the ledger's figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

_PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 86_400, 3 * 86_400)


class SchedulerMetrics:
    """Metrics of one scheduler instance, in a registry it owns."""

    def __init__(self, instance: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pass_seconds = Histogram("shuqi_scheduler_pass_seconds", "Time one scheduling pass took",
                                      buckets=_PASS_BUCKETS, registry=self.registry)
        self.leader = Gauge("shuqi_scheduler_leader", "1 on the scheduler instance that acts, 0 on a standby",
                            ["instance"], registry=self.registry).labels(instance)
        self.queue_wait = Histogram("shuqi_job_queue_wait_seconds", "Time a job waited from submit to start",
                                    buckets=_WAIT_BUCKETS, registry=self.registry)

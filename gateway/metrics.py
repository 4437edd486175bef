"""Prometheus metrics: request figures counted here, ledger figures read from the store at scrape time.

Reading the ledger at scrape means every replica reports the same truth rather than its own counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vouchers import rules
from vouchers.directory import Directory
from vouchers.journal import Journal
from vouchers.ledger import Ledger
from vouchers.models import Balance, UsageTotal
from vouchers.units import MICRO_PER_CREDIT, Kind

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class ServiceMetrics:
    """This process's request metrics, in a registry the app owns."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("shuqi_requests", "Requests answered, by startup, model and status code",
                                ["startup", "model", "code"], registry=self.registry)
        self.duration = Histogram("shuqi_request_duration_seconds", "Time from request to last byte",
                                  ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("shuqi_time_to_first_token_seconds", "Time from request to the first streamed chunk",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.overhead = Histogram("shuqi_gateway_overhead_seconds", "Time the gateway adds around the upstream call",
                                  ["model"], buckets=_OVERHEAD_BUCKETS, registry=self.registry)
        # Children by label values: `labels()` validates and locks on every call, a cost paid per request.
        self._counted: dict[tuple[str, str, str], Counter] = {}
        self._timed: dict[str, tuple[Histogram, Histogram]] = {}

    def observe(self, startup: str, model: str, code: int, total_s: float, overhead_s: float) -> None:
        """Count one answered request with its duration and the gateway's overhead."""
        key = (startup, model, str(code))
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(*key)
        counter.inc()
        timed = self._timed.get(model)
        if timed is None:
            timed = self._timed[model] = (self.duration.labels(model), self.overhead.labels(model))
        timed[0].observe(total_s)
        timed[1].observe(overhead_s)


class Snapshot:
    """A collector over families already built from one read of the store."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _ledger_families(balances: Iterable[Balance], totals: Iterable[UsageTotal], now: float) -> list[Metric]:
    credits = {name: GaugeMetricFamily(f"shuqi_credits_{name}", f"Model-voucher credits {name}, vouchers in force",
                                       labels=["startup"]) for name in ("granted", "remaining", "held")}
    gpu = {name: GaugeMetricFamily(f"shuqi_gpu_seconds_{name}", f"Compute-voucher GPU-seconds {name}",
                                   labels=["startup"]) for name in ("granted", "remaining", "held")}
    expiry = GaugeMetricFamily("shuqi_voucher_expiry_timestamp_seconds", "When a voucher in force expires",
                               labels=["startup", "voucher", "kind"])
    for b in balances:
        for name in ("granted", "remaining", "held"):
            credits[name].add_metric([b.startup_id], getattr(b.model, name) / MICRO_PER_CREDIT)
            gpu[name].add_metric([b.startup_id], getattr(b.compute, name) / 1000)
        for v in b.vouchers:
            if v.expires_at is not None and rules.in_force(v, now):
                expiry.add_metric([b.startup_id, v.id, v.kind.value], v.expires_at)
    spent = CounterMetricFamily("shuqi_credits_spent", "Credits debited", labels=["startup", "model"])
    gpu_spent = CounterMetricFamily("shuqi_gpu_seconds_spent", "GPU-seconds debited", labels=["startup", "gpu_type"])
    tokens = CounterMetricFamily("shuqi_tokens", "Tokens metered", labels=["startup", "model", "type"])
    for t in totals:
        if t.kind is Kind.MODEL:
            spent.add_metric([t.startup_id, t.label], t.amount / MICRO_PER_CREDIT)
            tokens.add_metric([t.startup_id, t.label, "prompt"], t.prompt_tokens)
            tokens.add_metric([t.startup_id, t.label, "completion"], t.completion_tokens)
        else:
            gpu_spent.add_metric([t.startup_id, t.label], t.amount / 1000)
    return [*credits.values(), *gpu.values(), expiry, spent, gpu_spent, tokens]


def _worker_family(counts: dict[tuple[str, str], int]) -> Metric:
    family = GaugeMetricFamily("shuqi_workers", "Worker replicas known to this gateway", labels=["model", "state"])
    for (model, state), n in sorted(counts.items()):
        family.add_metric([model, state], n)
    return family


async def render(directory: Directory, ledger: Ledger, journal: Journal, service: ServiceMetrics,
                 workers: dict[tuple[str, str], int], now: float) -> bytes:
    """The /metrics page: ledger gauges read now from the store, then this process's own metrics."""
    startups, totals = await asyncio.gather(directory.list_startups(), journal.usage_totals())
    balances = await asyncio.gather(*(ledger.balance(s.id) for s in startups))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot([*_ledger_families(balances, totals, now), _worker_family(workers)]))
    return bytes(generate_latest(registry)) + bytes(generate_latest(service.registry))

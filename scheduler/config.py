"""The scheduler's settings as the service uses them (built from the one settings source at the entry point)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vouchers.job_rules import DEFAULT_GPU_TYPE, parse_weights
from vouchers.settings import SchedulerSettings


@dataclass(frozen=True)
class SchedulerConfig:
    gpu_weights: Mapping[str, int] = field(default_factory=lambda: {DEFAULT_GPU_TYPE: 1000})  # milli-weights
    max_runtime_s: int = 7 * 86_400  # the longest `max_runtime_s` a job may ask for
    half_life_s: float = 7 * 86_400.0  # fair-share usage decays by half over this
    tick_s: float = 2.0  # a pass at least this often: metering, timeouts, Ray's view of each job
    lease_ttl_s: float = 10.0  # the leader lease; a standby takes over this long after the leader stops
    hold_ttl_s: float = 3600.0  # job holds are renewed well before this passes
    cover_check_s: float = 5.0  # how often queued and running jobs' vouchers are checked for void/expiry
    submit_grace_s: float = 60.0  # a RUNNING job Ray does not know is submitted again within this
    log_tail_bytes: int = 1024 * 1024  # the tail of a job's logs kept in the store
    estimate_limit: int = 200  # queued jobs given an estimated start (the rest get their position)
    estimate_s: float = 5.0  # estimates are refreshed this often, and whenever jobs start
    log_copy_s: float = 2.0  # how often a running job's log tail is copied to the store
    recover_limit: int = 1000  # ended jobs a new leader checks for a hold left open


def config_of(settings: SchedulerSettings) -> SchedulerConfig:
    """The service's view of its settings."""
    return SchedulerConfig(gpu_weights=parse_weights(settings.gpu_weights), max_runtime_s=settings.max_job_runtime_s,
                           half_life_s=settings.fair_share_half_life_s, tick_s=settings.scheduler_tick_s,
                           lease_ttl_s=settings.scheduler_lease_ttl_s, hold_ttl_s=settings.job_hold_ttl_s)

"""The scheduler's settings as the service uses them (built from the one settings source at the entry point)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vouchers.job_rules import DEFAULT_GPU_TYPE, parse_weights


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
    estimate_limit: int = 1000  # queued jobs given an estimated start
    log_copy_s: float = 2.0  # how often a running job's log tail is copied to the store
    recover_limit: int = 1000  # ended jobs a new leader checks for a hold left open


class SchedulerSettings(BaseSettings):
    """The scheduler's SHUQI_* environment, read once at the entry point (`shuqi scheduler`, `shuqi up`)."""

    model_config = SettingsConfigDict(env_prefix="SHUQI_", extra="ignore")

    store: str = "sqlite"
    data_dir: Path = Path(".shuqi")
    namespace: str = "shuqi"
    ray_dashboard: str = "http://127.0.0.1:8265"  # the Ray cluster's dashboard (its Jobs API)
    gpu_weights: str = ""  # "a100=2,t4=0.5"; the default type weighs 1
    max_job_runtime_s: int = Field(default=7 * 86_400, ge=1)
    fair_share_half_life_s: float = Field(default=7 * 86_400.0, gt=0)
    scheduler_tick_s: float = Field(default=1.0, gt=0)
    scheduler_lease_ttl_s: float = Field(default=6.0, gt=0)
    scheduler_metrics_port: int = Field(default=9464, ge=0)  # 0: no metrics endpoint of its own
    job_hold_ttl_s: float = Field(default=3600.0, gt=0)
    ray_timeout_s: float = Field(default=10.0, gt=0)

    def config(self) -> SchedulerConfig:
        return SchedulerConfig(gpu_weights=parse_weights(self.gpu_weights), max_runtime_s=self.max_job_runtime_s,
                               half_life_s=self.fair_share_half_life_s, tick_s=self.scheduler_tick_s,
                               lease_ttl_s=self.scheduler_lease_ttl_s, hold_ttl_s=self.job_hold_ttl_s)

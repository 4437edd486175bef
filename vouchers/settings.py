"""Every `SHUQI_*` setting, in one place: each default written once, read from the environment once.

An entry point builds the part it needs (`GatewaySettings()`, `UpSettings()`, ...) and passes it on; no
other module reads a `SHUQI_*` variable (a test holds every package to it). The parts compose by
inheritance, so one variable means one thing to every service:

    StoreSettings          SHUQI_DATA_DIR, SHUQI_STORE, SHUQI_NAMESPACE   (every service)
    ├── JobSettings        SHUQI_GPU_WEIGHTS, SHUQI_MAX_JOB_RUNTIME_S, ... (gateway and scheduler agree on jobs)
    │   ├── GatewaySettings    SHUQI_HOST, SHUQI_PORT, SHUQI_ADMIN_TOKEN, limits and timeouts of the gateway
    │   └── SchedulerSettings  SHUQI_RAY_DASHBOARD, SHUQI_SCHEDULER_*, SHUQI_FAIR_SHARE_HALF_LIFE_S
    ├── WorkerNodeSettings SHUQI_MODELS, SHUQI_WORKER_HOST, SHUQI_WORKER_ADVERTISE, SHUQI_VLLM_*
    ├── UpSettings         all of the above for `shuqi up`, plus SHUQI_LOGICAL_GPUS
    └── ClientSettings     SHUQI_BASE_URL, SHUQI_API_KEY, SHUQI_ADMIN_TOKEN for the client commands

It lives in the shared package so that gateway, workers, scheduler and the CLI can all import it without
importing each other. `shuqi config` prints the effective values, secrets masked (`masked`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SHUQI_"
# Fields whose value is never printed.
SECRET_FIELDS = frozenset({"admin_token", "api_key"})


class StoreSettings(BaseSettings):
    """Where the ledger and the state live: read by every service."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    data_dir: Path = Path(".shuqi")  # ledger, logs, generated secrets
    store: str = "sqlite"  # "sqlite", "sqlite:///PATH" or a redis:// URL
    namespace: str = "shuqi"  # key prefix on a shared Redis

    def store_url(self) -> str:
        """The store URL as another process must see it: the embedded SQLite file by its absolute path."""
        if self.store == "sqlite":
            return f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"
        return self.store


class JobSettings(StoreSettings):
    """What the gateway (checking a submit) and the scheduler (charging a job) must agree on."""

    gpu_weights: str = ""  # "a100=2,t4=0.5": each GPU type's price per GPU-hour; the default type weighs 1
    max_job_runtime_s: int = Field(default=7 * 86_400, ge=1)  # the longest max_runtime_s a job may ask for
    max_job_archive_bytes: int = Field(default=8 * 1024 * 1024, ge=0)  # a job's --working-dir, zipped
    job_hold_ttl_s: float = Field(default=3600.0, gt=0)  # a job's hold lives this long between renewals


class GatewaySettings(JobSettings):
    """Everything the gateway needs to start; build once and pass to `create_app`."""

    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = None  # generated into the data dir when unset
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_tokens_cap: int = Field(default=131_072, ge=1)  # largest max_tokens a request may ask for
    default_context_length: int = Field(default=8192, ge=1)  # worst case when a worker does not say
    hold_ttl_s: float = Field(default=600.0, gt=0)
    reap_interval_s: float = Field(default=30.0, gt=0)
    worker_refresh_s: float = Field(default=1.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    tokenize_timeout_s: float = Field(default=2.0, gt=0)
    tokenize_min_bytes: int = Field(default=2048, ge=0)  # smaller bodies are held at the byte bound, uncounted
    upstream_connect_timeout_s: float = Field(default=3.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    # Admission leases (gateway.leases): a replica sets aside this many worst cases of a startup's requests
    # in one hold and admits against it in memory (0: every request takes its own hold); an idle lease is
    # released after lease_idle_s.
    lease_requests: int = Field(default=32, ge=0)
    lease_idle_s: float = Field(default=1.0, gt=0)
    price_cache_s: float = Field(default=1.0, ge=0)  # how long a replica may use a stale price or limit
    # The answer to a request with an Idempotency-Key (JSON, or a finished stream's events) is kept this
    # long, up to this size, and sent again to a retry with the same key; each startup's kept answers
    # together stay under the budget (they share the ledger's store), past which new ones are not kept.
    answer_keep_s: float = Field(default=86_400.0, gt=0)
    answer_keep_max_bytes: int = Field(default=1024 * 1024, ge=0)
    answer_keep_budget_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    require_scheduler: bool = False  # /healthz also waits for a scheduler to have reported the cluster

    def resolve_admin_token(self) -> str:
        """The admin token: the configured one, else the one in the data dir, else a new one written there."""
        if self.admin_token:
            return self.admin_token
        path = self.data_dir / "admin-token"
        if path.exists():
            token = path.read_text().strip()
            if token:
                return token
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = "shuqi-admin-" + secrets.token_urlsafe(32)
        # Created with mode 600 from the start so the secret is never readable by others, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
        return token


class WorkerNodeSettings(StoreSettings):
    """What a worker on this machine serves and where its engine listens (`shuqi worker`, `shuqi up`)."""

    models: Path | None = None  # the model config (TOML); None: the packaged workers/models.toml
    worker_host: str = "127.0.0.1"  # where the engine listens; 0.0.0.0 on a node the gateway reaches over the network
    worker_advertise: str | None = None  # the host the gateway dials; this host's address when listening on 0.0.0.0
    vllm_python: str | None = None  # the interpreter that has vLLM; None: the worker's own
    vllm_models: Path | None = None  # where `bundled:smollm2` is looked up; None: models/ beside that venv


class SchedulerSettings(JobSettings):
    """The GPU job scheduler (`shuqi scheduler`; in `shuqi up`, on the local Ray head)."""

    ray_dashboard: str = "http://127.0.0.1:8265"  # the Ray cluster's dashboard: its Jobs and State APIs
    ray_timeout_s: float = Field(default=10.0, gt=0)  # every call to Ray
    fair_share_half_life_s: float = Field(default=7 * 86_400.0, gt=0)  # past GPU use counts half after this
    scheduler_tick_s: float = Field(default=1.0, gt=0)  # a pass at least this often (and on every submit)
    scheduler_lease_ttl_s: float = Field(default=6.0, gt=0)  # a standby takes over this long after the leader
    scheduler_metrics_port: int = Field(default=9464, ge=0)  # `shuqi scheduler`'s own /metrics; 0: none


class UpSettings(GatewaySettings, WorkerNodeSettings, SchedulerSettings):
    """`shuqi up`: the gateway, the workers and the scheduler of the embedded stack, from one environment."""

    logical_gpus: int | None = None  # GPU slots declared to the local Ray; None: Ray detects the GPUs
    require_scheduler: bool = True  # the embedded stack runs one

    @property
    def admin_token_set(self) -> bool:
        """True when the admin token comes from the environment rather than the data dir."""
        return bool(self.admin_token)


class ClientSettings(StoreSettings):
    """The client commands (`shuqi balance`, `shuqi admin ...`): which gateway, with which credentials."""

    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    admin_token: str | None = None  # else the token the gateway wrote to $SHUQI_DATA_DIR/admin-token


def masked(settings: BaseSettings) -> dict[str, str]:
    """Every field as `SHUQI_NAME -> value` text, secrets and store passwords hidden."""
    out: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        out[ENV_PREFIX + name.upper()] = _shown(name, value)
    return dict(sorted(out.items()))


def _shown(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in SECRET_FIELDS:
        return "********"
    text = str(value)
    if name == "store" and "://" in text:
        parts = urlsplit(text)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
            return urlunsplit(parts._replace(netloc=netloc))
    return text

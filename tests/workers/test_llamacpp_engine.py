"""The llama.cpp engine's command: the bundled GGUF, the served name, the address."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.engine import ModelSpec
from workers.engines import get_engine
from workers.llamacpp_engine import resolve_model_path


def test_bundled_smollm2_resolves_to_the_gguf_inside_the_package() -> None:
    path = resolve_model_path("bundled:smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_command_serves_the_model_under_its_name(tmp_path: Path) -> None:
    spec = ModelSpec(name="smollm2-135m", engine="llamacpp", model="bundled:smollm2", max_model_len=1024,
                     extra_args=("--n_threads", "2"))
    argv = get_engine("llamacpp").command(spec, host="127.0.0.1", port=8123, data_dir=tmp_path)
    assert argv[1:3] == ["-m", "workers.llamacpp_server"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert pairs["--model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (pairs["--model_alias"], pairs["--host"], pairs["--port"], pairs["--n_ctx"]) == (
        "smollm2-135m", "127.0.0.1", "8123", "1024")
    assert pairs["--n_threads"] == "2"
    assert pairs["--interrupt_requests"] == "false"


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_model_path(str(tmp_path / "nope.gguf"))


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        get_engine("tensorrt")

"""Engine lookup by the name a model spec gives."""

from __future__ import annotations

from workers.engine import Engine


def get_engine(name: str) -> Engine:
    """The engine implementation for `name` ("llamacpp" or "vllm"); ValueError if unknown."""
    if name == "llamacpp":
        from workers.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine()
    if name == "vllm":
        # Imported lazily: the light install has no vLLM, and its engine module must not be needed there.
        from workers.vllm_engine import VllmEngine

        engine: Engine = VllmEngine()
        return engine
    raise ValueError(f"unknown engine {name!r}: use 'llamacpp' or 'vllm'")

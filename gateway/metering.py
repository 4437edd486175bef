"""Pure metering arithmetic: the worst case a request may cost, and what its usage costs."""

from __future__ import annotations

from dataclasses import dataclass

from vouchers.models import Price
from vouchers.units import token_cost


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


def completion_budget(generations: int, max_tokens: int | None, context_length: int) -> int:
    """Most completion tokens a request can produce: every choice runs to max_tokens or the context."""
    return generations * (max_tokens if max_tokens is not None else context_length)


def cost(usage: Usage, price: Price | None) -> int:
    """Micro-credits for this usage at this price (0 for an unpriced model), rounded up."""
    if price is None:
        return 0
    return token_cost(usage.prompt_tokens, usage.completion_tokens, price.input_per_1m, price.output_per_1m)


def worst_case(prompt_tokens: int, completion_tokens: int, price: Price | None) -> int:
    """The hold to take before proxying: the prompt plus the full completion budget."""
    return cost(Usage(prompt_tokens, completion_tokens), price)


def usage_from(payload: object) -> Usage | None:
    """Read an OpenAI `usage` object; None when absent or malformed."""
    if not isinstance(payload, dict):
        return None
    prompt = payload.get("prompt_tokens")
    completion = payload.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion)

"""Amounts: integers in the smallest unit inside, decimal strings at the edges.

Model vouchers count micro-credits (1 credit = 1,000,000). Compute vouchers count GPU-milliseconds
(1 GPU-hour = 3,600,000). Prices are micro-credits per million tokens.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import StrEnum

MICRO_PER_CREDIT = 1_000_000
MS_PER_GPU_HOUR = 3_600_000
# The Redis store computes in Lua, whose numbers are doubles: integers are exact only up to 2^53
# (about 9e9 credits or 2.5 million GPU-hours per voucher).
MAX_AMOUNT = 2**53 - 1


class Kind(StrEnum):
    MODEL = "model"
    COMPUTE = "compute"

    @property
    def scale(self) -> int:
        return MICRO_PER_CREDIT if self is Kind.MODEL else MS_PER_GPU_HOUR


def parse_amount(text: str | int | float, kind: Kind) -> int:
    """Parse a decimal string (credits or GPU-hours) into the smallest unit; ValueError if bad.

    Rejects negatives, non-finite values and more precision than the smallest unit holds.
    """
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal number: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValueError("amount must be a finite, non-negative decimal")
    scaled = value * kind.scale
    if scaled != scaled.to_integral_value():
        raise ValueError(f"more precision than 1/{kind.scale} of a unit")
    units = int(scaled)
    if units > MAX_AMOUNT:
        raise ValueError("amount too large")
    return units


def format_amount(units: int, kind: Kind) -> str:
    """Render an integer amount as a plain decimal string in credits or GPU-hours."""
    value = Decimal(units) / Decimal(kind.scale)
    text = format(value.normalize(), "f")
    return text


def parse_price(text: str | int | float) -> int:
    """Credits per million tokens as a decimal string -> micro-credits per million tokens."""
    return parse_amount(text, Kind.MODEL)


def token_cost(prompt_tokens: int, completion_tokens: int, input_per_1m: int, output_per_1m: int) -> int:
    """Micro-credits for a token count, rounded up so fractions are never given away."""
    numerator = prompt_tokens * input_per_1m + completion_tokens * output_per_1m
    return -(-numerator // 1_000_000)


def gpu_ms(gpus: int, seconds: float) -> int:
    """GPU-milliseconds for `gpus` GPUs over `seconds`, rounded up."""
    return int((Decimal(gpus) * Decimal(str(seconds)) * 1000).to_integral_value(ROUND_CEILING))

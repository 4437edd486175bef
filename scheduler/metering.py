"""GPU time in integers: what a job holds on submit, what it has burned, what a periodic settle debits.

Amounts are GPU-milliseconds. A GPU type's weight comes from config as a decimal string ("1", "2.5")
and is kept as an integer number of thousandths (milli-weight), so a weighted amount is
`ceil(raw_gpu_ms * weight_milli / 1000)`: rounded up once, on the whole amount, never per tick.

Elapsed time is counted in whole milliseconds, rounded to the nearest (a difference of two epoch
timestamps carries float error of a fraction of a microsecond either way), and capped at the job's
limit, so a job is never charged past what it held.
A periodic settle debits `due(...)`: the charge for the whole elapsed time so far minus what earlier
settles took. The charge is a non-decreasing function of elapsed time, so the dues of any sequence of
ticks add up to the final charge exactly, and none is negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from scheduler.records import DEFAULT_GPU_TYPE

MILLI = 1000


def weight_milli(weight: str | Decimal) -> int:
    """A weight from config ("1.5") in thousandths (1500); ValueError if not positive or finer than 0.001."""
    try:
        value = Decimal(weight) * MILLI
    except InvalidOperation as exc:
        raise ValueError(f"GPU weight {weight!r} is not a decimal number") from exc
    if not value.is_finite() or value <= 0 or value != value.to_integral_value():
        raise ValueError(f"GPU weight {weight!r} must be positive with at most 3 decimals")
    return int(value)


def weights_milli(config: Mapping[str, str | Decimal]) -> dict[str, int]:
    """Every configured GPU type's milli-weight, with the default type at 1 unless configured."""
    weights = {gpu_type: weight_milli(w) for gpu_type, w in config.items()}
    weights.setdefault(DEFAULT_GPU_TYPE, MILLI)
    return weights


def elapsed_ms(seconds: float) -> int:
    """`seconds` in whole milliseconds, to the nearest (0 for a negative span)."""
    return max(0, math.floor(seconds * MILLI + 0.5))


def weighted_ms(raw_gpu_ms: int, weight_milli: int) -> int:
    """Weighted GPU-milliseconds for raw ones, rounded up."""
    return -(-raw_gpu_ms * weight_milli // MILLI)


def hold_ms(gpus: int, max_runtime_s: float, weight_milli: int) -> int:
    """Weighted GPU-milliseconds to hold on submit: the whole limit."""
    return weighted_ms(gpus * elapsed_ms(max_runtime_s), weight_milli)


def charged_ms(
    gpus: int, elapsed_s: float, weight_milli: int, max_runtime_s: float | None = None
) -> tuple[int, int]:
    """(raw GPU-ms, weighted GPU-ms) burned after `elapsed_s`, capped at `max_runtime_s` when given."""
    ms = elapsed_ms(elapsed_s)
    if max_runtime_s is not None:
        ms = min(ms, elapsed_ms(max_runtime_s))
    raw = gpus * ms
    return raw, weighted_ms(raw, weight_milli)


def due(
    gpus: int,
    weight_milli: int,
    started_at: float,
    now: float,
    max_runtime_s: float,
    already_charged_weighted_ms: int,
) -> int:
    """Weighted GPU-ms a settle at `now` should debit, given what earlier settles took; never negative."""
    _, total = charged_ms(gpus, now - started_at, weight_milli, max_runtime_s)
    return max(0, total - already_charged_weighted_ms)

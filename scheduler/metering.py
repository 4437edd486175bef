"""GPU time in integers: what a job holds on submit, what it has burned, what a periodic settle debits.

Amounts are GPU-milliseconds. A GPU type's weight is an integer number of thousandths (milli-weight,
parsed from the settings by `vouchers.job_rules.parse_weights`, which also computes the hold a job
takes on submit, `hold_ms`), so a weighted amount is
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

MILLI = 1000


def elapsed_ms(seconds: float) -> int:
    """`seconds` in whole milliseconds, to the nearest (0 for a negative span)."""
    return max(0, math.floor(seconds * MILLI + 0.5))


def weighted_ms(raw_gpu_ms: int, weight_milli: int) -> int:
    """Weighted GPU-milliseconds for raw ones, rounded up."""
    return -(-raw_gpu_ms * weight_milli // MILLI)


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

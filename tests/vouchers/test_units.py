"""Amounts at the edges: decimal strings in, integers in the smallest unit inside, and back."""

from __future__ import annotations

import pytest

from vouchers.units import (
    MAX_AMOUNT,
    Kind,
    format_amount,
    gpu_ms,
    parse_amount,
    parse_price,
    token_cost,
)


@pytest.mark.parametrize(
    ("text", "kind", "units"),
    [
        ("12.5", Kind.MODEL, 12_500_000),
        ("0.000001", Kind.MODEL, 1),
        ("0", Kind.MODEL, 0),
        (3, Kind.MODEL, 3_000_000),
        ("1", Kind.COMPUTE, 3_600_000),
        ("0.5", Kind.COMPUTE, 1_800_000),
        ("1e2", Kind.MODEL, 100_000_000),
    ],
)
def test_parse_amount(text: str | int, kind: Kind, units: int) -> None:
    assert parse_amount(text, kind) == units


@pytest.mark.parametrize(
    "text",
    ["-1", "abc", "", "NaN", "Infinity", "0.0000001", "1.23.4", str(MAX_AMOUNT)],
)
def test_parse_amount_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text, Kind.MODEL)


def test_compute_precision_is_one_gpu_millisecond() -> None:
    assert parse_amount("0.001", Kind.COMPUTE) == 3_600
    with pytest.raises(ValueError):
        parse_amount(str(1 / 7_200_000), Kind.COMPUTE)


@pytest.mark.parametrize(
    ("units", "kind", "text"),
    [
        (12_500_000, Kind.MODEL, "12.5"),
        (1, Kind.MODEL, "0.000001"),
        (0, Kind.MODEL, "0"),
        (100_000_000, Kind.MODEL, "100"),
        (5_400_000, Kind.COMPUTE, "1.5"),
    ],
)
def test_format_amount(units: int, kind: Kind, text: str) -> None:
    assert format_amount(units, kind) == text


@pytest.mark.parametrize("text", ["0.000001", "7", "123456.654321", "1000000"])
def test_format_parse_round_trip(text: str) -> None:
    assert format_amount(parse_amount(text, Kind.MODEL), Kind.MODEL) == text


def test_parse_price_is_micro_credits_per_million_tokens() -> None:
    assert parse_price("0.5") == 500_000
    assert parse_price("1.5") == 1_500_000
    with pytest.raises(ValueError):
        parse_price("-0.5")


def test_token_cost_rounds_up() -> None:
    # 1 prompt token at 0.5 credits per million is half a micro-credit: charged as one.
    assert token_cost(1, 0, 500_000, 1_500_000) == 1
    assert token_cost(1_000_000, 0, 500_000, 1_500_000) == 500_000
    assert token_cost(1_000, 2_000, 500_000, 1_500_000) == 3_500
    assert token_cost(1_000_001, 0, 1_000_000, 0) == 1_000_001
    assert token_cost(3, 0, 333_333, 0) == 1  # 0.999999 micro-credits
    assert token_cost(0, 0, 500_000, 1_500_000) == 0


def test_gpu_ms_rounds_up() -> None:
    assert gpu_ms(1, 1.0) == 1_000
    assert gpu_ms(2, 0.0005) == 1
    assert gpu_ms(4, 3600) == 4 * 3_600_000
    assert gpu_ms(1, 0.0001) == 1

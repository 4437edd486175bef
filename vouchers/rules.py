"""The ledger's rules as pure functions: no I/O, no clock, no store.

Both backends decide with these (the SQLite ledger calls them inside its transaction; the Redis ledger
for everything its scripts do not), and so does the tests' reference model. The Lua scripts in
`vouchers/lua` are the one other copy, because on Redis a check and its write must run in one script;
`tests/vouchers/test_lua_rules.py` keeps them equal to these functions.

- In force: not voided, effective, not expired (`effective_at <= now < expires_at`).
- Burn order: lower priority first, then the soonest expiry (none last), then the oldest, then by id.
- Allocation: an amount is taken from each candidate in burn order, as much as it has, until none is left.
- Amounts are integers in the smallest unit, 0 < amount <= MAX_AMOUNT (0 allowed where said); a TTL is a
  positive, finite number of seconds.
- Balance per kind: granted = spent + held + remaining, over the vouchers in force.
- Rate limits count in fixed windows of RATE_WINDOW_S, named by their start; a request counts only if
  both the request and the token limit still allow it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, TypeVar

from vouchers.errors import InvalidRequest
from vouchers.models import KindBalance, Limits, RateDecision
from vouchers.units import MAX_AMOUNT

RATE_WINDOW_S = 60


class Terms(Protocol):
    """What the rules read of a voucher (a `Voucher`, or the tests' model of one)."""

    @property
    def id(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def effective_at(self) -> float: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def voided_at(self) -> float | None: ...
    @property
    def created_at(self) -> float: ...


class Amounts(Protocol):
    @property
    def amount(self) -> int: ...
    @property
    def spent(self) -> int: ...
    @property
    def held(self) -> int: ...


T = TypeVar("T", bound=Terms)


def check_amount(amount: int, param: str, *, allow_zero: bool = False) -> None:
    """InvalidRequest unless amount is an integer in range (positive unless zero is allowed)."""
    low = 0 if allow_zero else 1
    if isinstance(amount, bool) or not isinstance(amount, int) or not low <= amount <= MAX_AMOUNT:
        raise InvalidRequest(f"{param} must be an integer between {low} and {MAX_AMOUNT}", param=param)


def check_ttl(ttl_s: float) -> None:
    """InvalidRequest unless the TTL is a positive, finite number of seconds."""
    if not ttl_s > 0 or math.isinf(ttl_s):
        raise InvalidRequest("ttl_s must be positive", param="ttl_s")


def check_validity(effective_at: float, expires_at: float | None) -> None:
    """InvalidRequest unless a voucher expires after it takes effect."""
    if expires_at is not None and expires_at <= effective_at:
        raise InvalidRequest("expires_at must be after effective_at", param="expires_at")


def in_force(voucher: Terms, now: float) -> bool:
    """Effective, not expired, not voided: it can still be burned."""
    if voucher.voided_at is not None or now < voucher.effective_at:
        return False
    return voucher.expires_at is None or now < voucher.expires_at


def burn_key(voucher: Terms) -> tuple[int, float, float, str]:
    """Burn order: priority (lower first), then soonest expiry (none last), then oldest, then id."""
    expiry = voucher.expires_at if voucher.expires_at is not None else math.inf
    return (voucher.priority, expiry, voucher.created_at, voucher.id)


def burn_order(vouchers: Iterable[T], now: float) -> list[T]:
    """The vouchers in force, in burn order."""
    return sorted((v for v in vouchers if in_force(v, now)), key=burn_key)


def allocate(candidates: Iterable[tuple[str, int]], amount: int) -> tuple[list[tuple[str, int]], int]:
    """Take `amount` from (id, room) pairs given in burn order: the parts taken (none of 0), and what is left."""
    taken: list[tuple[str, int]] = []
    left = amount
    for voucher_id, room in candidates:
        if left <= 0:
            break
        take = min(room, left)
        if take > 0:
            taken.append((voucher_id, take))
            left -= take
    return taken, left


def free(voucher: Amounts) -> int:
    """What a voucher can still take: amount - spent - held."""
    return voucher.amount - voucher.spent - voucher.held


def kind_balance(vouchers: Iterable[Amounts]) -> KindBalance:
    """Granted, spent, held and remaining over these vouchers (those in force of one kind)."""
    granted = spent = held = 0
    for v in vouchers:
        granted += v.amount
        spent += v.spent
        held += v.held
    return KindBalance(granted=granted, spent=spent, held=held, remaining=granted - spent - held)


def rate_window(now: float) -> tuple[int, float]:
    """The start of the rate window `now` falls in, and the seconds until it ends."""
    start = math.floor(now / RATE_WINDOW_S) * RATE_WINDOW_S
    return start, start + RATE_WINDOW_S - now


def rate_allows(limits: Limits, used_requests: int, used_tokens: int, requests: int, tokens: int) -> bool:
    """True when both limits still allow counting this request in the window."""
    return (limits.rpm is None or used_requests + requests <= limits.rpm) and (
        limits.tpm is None or used_tokens + tokens <= limits.tpm
    )


def rate_decision(limits: Limits, allowed: bool, counted_requests: int, counted_tokens: int,
                  reset_s: float) -> RateDecision:
    """What a rate check answers, from what the window counts after it (the request included if allowed)."""
    return RateDecision(
        allowed=allowed,
        limit_requests=limits.rpm,
        remaining_requests=None if limits.rpm is None else max(limits.rpm - counted_requests, 0),
        limit_tokens=limits.tpm,
        remaining_tokens=None if limits.tpm is None else max(limits.tpm - counted_tokens, 0),
        reset_s=reset_s,
        retry_after_s=0.0 if allowed else reset_s,
    )

"""The ledger: vouchers granted to startups, holds on them, and the debits that settle those holds.

Two implementations keep these rules and share one test suite: `SqliteLedger` (embedded default) and
`RedisLedger` (shared by gateway replicas); `vouchers.factory.open_stores` opens the one a URL names.
What a rule decides (in force, burn order, allocation, amount and TTL checks) is written once, in
`vouchers.rules`; the Redis scripts are its atomic copy.

Ledger rules every backend keeps:
- available(startup, kind) = sum over vouchers in force of (amount - spent - held).
- reserve is all-or-nothing: it allocates the amount over vouchers in force in burn order and marks
  it held on them, or raises InsufficientQuota and changes nothing. Before allocating it releases
  that startup's holds whose TTL has passed (kept even when it then raises). The same idempotency
  key returns the first hold.
- settle debits `actual`: first from the hold's own allocations on vouchers still in force, in burn
  order; then from free capacity of vouchers in force (the hold's own included), in burn order; what
  is left is recorded as `overage` on the journal line. A final settle frees the rest of the hold
  and happens once: a second final settle returns the first line. A partial settle (final=False,
  with its own idempotency key; InvalidRequest without one) leaves the hold open with its
  allocation reduced by what was debited. A settle whose key is already in the journal (for that
  startup) returns that line. Settling a released (or reaped) hold still charges, from free
  capacity, then overage; a final one marks the hold settled.
- extend: a hold that is not open, or whose TTL has passed, is a Conflict.
- release frees what the hold still holds; releasing a settled or released hold changes nothing.
- A voided or expired voucher takes no new holds and no new debits; its past spending stands.
- Every debit appends a journal line (`vouchers.journal`); sum of journal amounts == sum of voucher `spent`.
- A void is a ledger event (`vouchers.events`): watching listeners have heard of it when `void_voucher`
  returns.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import Balance, ChargeRef, Hold, JournalLine, Voucher
from vouchers.units import Kind


class Ledger(Protocol):
    async def grant(
        self,
        startup_id: str,
        kind: Kind,
        amount: int,
        *,
        effective_at: float | None = None,
        expires_at: float | None = None,
        priority: int = 0,
        note: str = "",
    ) -> Voucher:
        """Grant a voucher (effective now unless told); NotFound if the startup does not exist."""
        ...

    async def void_voucher(self, voucher_id: str) -> Voucher:
        """Stop a voucher burning; past usage stands. NotFound if unknown. Watching listeners have heard of
        it (as its startup's event) when this returns."""
        ...

    async def get_voucher(self, voucher_id: str) -> Voucher | None:
        """The voucher with its current spent and held, or None."""
        ...

    async def list_vouchers(self, startup_id: str, kind: Kind | None = None) -> list[Voucher]:
        """A startup's vouchers, in force or not, in burn order."""
        ...

    async def reserve(
        self, startup_id: str, kind: Kind, amount: int, *, ttl_s: float, idempotency_key: str,
        key_id: str | None = None,
    ) -> Hold:
        """Hold `amount` atomically or raise InsufficientQuota; same key returns the first hold (as it is
        now, with `replayed` set).

        `amount` may be 0: a hold that takes nothing, whose settle still journals the tokens used (a request
        to a free model); NotFound if the startup does not exist, as nothing else would notice.
        With `key_id`, the API key must not be revoked, checked in the same atomic step (else
        AuthenticationError and nothing changes): a gateway that remembers which startup a key belongs to
        admits a request in one call and a revocation still stops the very next one.
        """
        ...

    async def extend(self, hold_id: str, *, ttl_s: float, add_amount: int = 0) -> Hold:
        """Push an open hold's expiry to now + ttl_s and optionally hold more (all-or-nothing)."""
        ...

    async def settle(
        self,
        hold_id: str,
        actual: int,
        ref: ChargeRef,
        *,
        final: bool = True,
        idempotency_key: str | None = None,
    ) -> JournalLine:
        """Debit `actual` against a hold; see the module docstring for the exact rules."""
        ...

    async def charge(self, hold_id: str, actual: int, ref: ChargeRef) -> None:
        """`settle(hold_id, actual, ref, final=True)` for a caller that does not need the journal line back
        (the gateway after each answer): the same rules, without the cost of reading the line."""
        ...

    async def release(self, hold_id: str) -> Hold:
        """Free what an open hold still holds; NotFound if unknown."""
        ...

    async def get_hold(self, hold_id: str) -> Hold | None:
        """The hold, or None."""
        ...

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        ...

    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        ...

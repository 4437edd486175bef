"""The store interface: the ledger, keys, prices, limits and the worker registry, all async.

Two implementations share this interface and one test suite: `SqliteStore` (embedded default) and
`RedisStore` (shared by gateway replicas). Services receive a `Store`; they never know which.

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
- Every debit appends a journal line; sum of journal amounts == sum of voucher `spent`.

Ledger events (`vouchers.events`): where the store can tell them (`watching`), a revoked key and a voided
voucher are told to every listener watching the same ledger, and `revoke_key` / `void_voucher` return only
once each listener has heard. Redis can; SQLite cannot (another process may share the file unheard).
"""

from __future__ import annotations

from typing import Protocol

from vouchers.events import Listener
from vouchers.models import (
    ApiKey,
    Balance,
    ChargeRef,
    Hold,
    JournalLine,
    Limits,
    Price,
    RateDecision,
    Startup,
    UsageTotal,
    Voucher,
    WorkerRecord,
)
from vouchers.units import Kind


class Store(Protocol):
    async def close(self) -> None:
        """Release connections and threads."""
        ...

    # ledger events
    async def watch(self, listener: Listener) -> None:
        """Tell `listener` of every key revocation and voucher void on this ledger from now on, made
        through any store on it; returns once events flow (see `watching`)."""
        ...

    async def unwatch(self, listener: Listener) -> None: ...

    @property
    def watching(self) -> bool:
        """True while every event reaches this store's listeners; when it turns False they hear None."""
        ...

    # startups and keys
    async def create_startup(self, startup_id: str, name: str) -> Startup:
        """Create a startup; Conflict if the id exists."""
        ...

    async def get_startup(self, startup_id: str) -> Startup | None: ...

    async def list_startups(self) -> list[Startup]: ...

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""
        ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        ...

    async def list_keys(self, startup_id: str) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once; NotFound if unknown. Revoking twice keeps the first time. Watching listeners have
        heard of it when this returns."""
        ...

    # vouchers
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

    async def get_voucher(self, voucher_id: str) -> Voucher | None: ...

    async def list_vouchers(self, startup_id: str, kind: Kind | None = None) -> list[Voucher]: ...

    # holds
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

    async def get_hold(self, hold_id: str) -> Hold | None: ...

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        ...

    # reading the ledger
    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        ...

    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first), optionally for one startup and time range.

        `since` is inclusive, `until` exclusive; `limit` keeps the oldest lines.
        """
        ...

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        ...

    # prices and limits
    async def set_price(self, price: Price) -> Price: ...

    async def get_price(self, model: str) -> Price | None: ...

    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer under its idempotency key for `ttl_s`, to send again to a retry.

        With `budget_bytes`, nothing is kept (False) when the startup's answers still kept, plus this one
        (in place of any under the same key), would pass that many bytes.
        """
        ...

    async def kept_answer(self, startup_id: str, key: str) -> bytes | None:
        """The answer kept under this key, or None (never kept, or its time is up)."""
        ...

    async def list_prices(self) -> list[Price]: ...

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits: ...

    async def get_limits(self, startup_id: str) -> Limits: ...

    async def rate_limit(
        self, startup_id: str, limits: Limits, *, requests: int, tokens: int, key_id: str | None = None
    ) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed.

        With `key_id`, a revoked key counts nothing and raises AuthenticationError (as in `reserve`).
        """
        ...

    # worker registry
    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        ...

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        ...

    async def deregister_worker(self, worker_id: str) -> None: ...

    async def list_workers(self, model: str | None = None) -> list[WorkerRecord]:
        """Workers whose heartbeat is within their TTL, optionally for one model."""
        ...

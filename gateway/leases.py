"""Admission leases: a replica admits a startup's requests against credits it set aside in one hold.

On the exact path every request makes two ledger calls: a hold of its worst case before the upstream is
asked, and a charge after. The hold sits on the critical path of every request, and under load the two
calls cost the gateway and Redis more CPU than the proxying itself. With a lease, the replica holds
`lease_requests` worst cases in one `reserve`, admits requests against it in memory, and charges each
request against it (a partial settle under the request's own key, so the journal keeps a line per
request); it grows the lease with `extend` when it runs short and releases what is left once idle.

What stays exact:
- No overspend. A request is admitted only if its worst case fits what the lease holds in the store,
  less the worst cases of the lease's requests still running (a charge lowers it at once, before the
  store has it). What this replica counts as held is never more than the store holds for the lease.
- A revoked key or a voided voucher stops at once. The store's ledger events (`vouchers.events`) reach
  every replica before the admin call returns; a void retires the startup's lease (new requests take a
  new one, drawn from vouchers still in force). While events do not flow, no lease admits anything.
- An expiring voucher: a lease admits nothing once a voucher it draws on has expired.
- Scarce credit: when a full lease does not fit, the lease grows by just what the waiting requests
  need, then one; when not even that fits, requests take the exact path for a second, so on one replica
  the last credits go out as without leases.

What a user sees differently: `held` includes what this replica's leases set aside, until they have
been idle for `lease_idle_s` or a balance is read through this replica. With several replicas, near the
end of a startup's credit, one replica may refuse a request while another's lease still holds some of
that credit (it is used there, or released once that lease is idle).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from vouchers.clock import Clock
from vouchers.errors import Conflict, InsufficientQuota, NotFound
from vouchers.events import EventKind, LedgerEvent
from vouchers.ledger import Ledger
from vouchers.models import ChargeRef, Hold
from vouchers.units import Kind

log = logging.getLogger(__name__)

SHORT_S = 1.0  # after a lease could not grow, the startup's requests take the exact path this long
_ATTEMPTS = 3  # looks for room (each after one change to the lease) before a request takes its own hold


@dataclass(eq=False)
class Lease:
    startup_id: str
    hold_id: str
    held: int  # what the store holds for the lease, as this replica knows it (never more than the store)
    expires_at: float  # the hold's own expiry (ledger clock); the keeper pushes it on
    horizon: float  # the first expiry among the vouchers it draws on (ledger clock)
    last_used: float  # monotonic
    running: int = 0  # worst cases of admitted requests not yet charged or released
    tickets: int = 0
    charging: int = 0  # charges on their way to the store
    wanted: int = 0  # worst cases of the requests waiting for room
    refill_after: float = 0.0  # monotonic: no background refill before then (the last one did not fit)
    retired: bool = False

    @property
    def free(self) -> int:
        return self.held - self.running

    @property
    def idle(self) -> bool:
        return self.tickets == 0 and self.charging == 0


class Ticket:
    """One request admitted on a lease; the exchange charges or releases it once (`gateway.admission`)."""

    def __init__(self, store: Ledger, lease: Lease, worst: int, key: str) -> None:
        self._store = store
        self._lease = lease
        self._worst = worst
        self._key = key
        self._ended = False

    def _end(self, used: int) -> None:
        if not self._ended:
            self._ended = True
            lease = self._lease
            lease.running -= self._worst
            lease.held -= used
            lease.tickets -= 1
            lease.last_used = time.monotonic()

    async def charge(self, amount: int, ref: ChargeRef) -> None:
        self._end(amount)
        lease = self._lease
        lease.charging += 1
        try:
            await self._store.settle(lease.hold_id, amount, ref, final=False, idempotency_key=self._key)
        finally:
            lease.charging -= 1

    async def release(self) -> None:
        self._end(0)

    async def keep_alive(self, ttl_s: float) -> None:
        """Push the lease's expiry on (a long stream; the keeper does it too, on its own schedule)."""
        hold = await self._store.extend(self._lease.hold_id, ttl_s=ttl_s)
        self._lease.expires_at = hold.expires_at


class Leases:
    """This replica's leases, one per startup, and the ones retired but still running requests."""

    def __init__(self, store: Ledger, clock: Clock, *, requests: int, idle_s: float, ttl_s: float,
                 events_flow: Callable[[], bool]) -> None:
        self._store = store
        self._events_flow = events_flow  # True while the store's ledger events reach this replica
        self._clock = clock
        self._requests = requests
        self._idle_s = idle_s
        self._ttl_s = ttl_s
        self._current: dict[str, Lease] = {}
        self._retired: set[Lease] = set()
        self._short: dict[str, float] = {}
        self._epochs: dict[str, int] = {}  # per startup: bumped by each void, so a lease taken across one is dropped
        self._epoch = 0  # bumped when events may have been missed
        self._expiries: dict[str, float] = {}  # voucher id -> its expiry (inf: none)
        self._changing: dict[str, asyncio.Task[None]] = {}  # the one open or grow under way, per startup

    @property
    def enabled(self) -> bool:
        return self._requests > 0 and self._events_flow()

    def leases(self) -> list[Lease]:
        return [*self._current.values(), *self._retired]

    def _usable(self, lease: Lease) -> bool:
        # Admissions stop well before the hold's own expiry: the keeper renews it long before that.
        now = self._clock.now()
        return not lease.retired and now < lease.horizon and now < lease.expires_at - self._ttl_s / 4

    def _take(self, lease: Lease, worst: int, key: str) -> Ticket:
        lease.running += worst
        lease.tickets += 1
        lease.last_used = time.monotonic()
        return Ticket(self._store, lease, worst, key)

    async def admit(self, startup_id: str, worst: int, key: str) -> Ticket | None:
        """A ticket for a request whose worst case is `worst` (`key`: its charge's idempotency key), or None:
        the request takes the exact path (its own hold)."""
        if not self.enabled or worst <= 0:
            return None
        for _ in range(_ATTEMPTS):
            lease = self._current.get(startup_id)
            if lease is not None and not self._usable(lease):
                self._retire(lease)
                lease = None
            if lease is not None and lease.free >= worst:
                self._refill_soon(lease, worst)
                return self._take(lease, worst, key)
            if self._short.get(startup_id, 0.0) > time.monotonic():
                return None
            # No room: wait for the one change of this startup's lease under way (or start it), then look again.
            if lease is not None:
                lease.wanted += worst
            try:
                await self._change(startup_id, worst)
            finally:
                if lease is not None:
                    lease.wanted -= worst
            if not self.enabled:
                return None
        return None

    def _target(self, lease: Lease, worst: int) -> int:
        """How much a lease should have free: `requests` worst cases, plus as much as its requests running
        now hold (under more concurrency a lease of a fixed size would run dry every few requests)."""
        return worst * self._requests + lease.running

    def _refill_soon(self, lease: Lease, worst: int) -> None:
        """Grow the lease in the background once half of its room is taken, so requests rarely wait."""
        if (lease.free - worst >= self._target(lease, worst) // 2 or lease.startup_id in self._changing
                or lease.refill_after > time.monotonic()):
            return
        self._start(lease.startup_id, self._refill(lease, worst))

    async def _refill(self, lease: Lease, worst: int) -> None:
        try:
            await self._grow(lease, worst, background=True)
        except Exception:
            log.exception("could not grow a lease", extra={"startup": lease.startup_id})

    async def _change(self, startup_id: str, worst: int) -> None:
        """Wait for the change under way to the startup's lease, or open or grow it now."""
        task = self._changing.get(startup_id)
        if task is None:
            lease = self._current.get(startup_id)
            task = self._start(startup_id, self._open(startup_id, worst) if lease is None else
                               self._grow(lease, worst, background=False))
        await asyncio.shield(task)

    def _start(self, startup_id: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._changing[startup_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._changing.get(startup_id) is task:
                del self._changing[startup_id]

        task.add_done_callback(done)
        return task

    async def _open(self, startup_id: str, worst: int) -> None:
        epochs = (self._epoch, self._epochs.get(startup_id, 0))
        key = f"{startup_id}:lease:{secrets.token_hex(8)}"
        try:
            hold = await self._store.reserve(startup_id, Kind.MODEL, worst * self._requests, ttl_s=self._ttl_s,
                                             idempotency_key=key)
        except InsufficientQuota:
            self._short[startup_id] = time.monotonic() + SHORT_S
            return
        lease = Lease(startup_id, hold.id, held=sum(amount for _, amount in hold.allocations),
                      expires_at=hold.expires_at, horizon=await self._horizon(hold), last_used=time.monotonic())
        if epochs != (self._epoch, self._epochs.get(startup_id, 0)):
            self._retired.add(lease)  # a void (or lost events) came in meanwhile: this lease may draw on it
            lease.retired = True
            return
        self._current[startup_id] = lease

    async def _grow(self, lease: Lease, worst: int, *, background: bool) -> None:
        """Hold more on the lease: enough for its target and every request waiting, else (not in the
        background) just enough for those waiting, else for one. When nothing fits the startup is short
        for a while (its requests take their own holds), or, in the background, no refill is tried."""
        epochs = (self._epoch, self._epochs.get(lease.startup_id, 0))
        full = self._target(lease, worst) + lease.wanted
        tries = [full] if background else [full, lease.wanted, worst]
        for want in tries:
            add = want - lease.free
            if add <= 0:
                continue
            try:
                hold = await self._store.extend(lease.hold_id, ttl_s=self._ttl_s, add_amount=add)
            except InsufficientQuota:
                continue
            except (Conflict, NotFound):
                self._retire(lease)
                return
            lease.held += add
            lease.expires_at = hold.expires_at
            lease.horizon = min(lease.horizon, await self._horizon(hold))
            if epochs != (self._epoch, self._epochs.get(lease.startup_id, 0)):
                self._retire(lease)
            return
        if background:
            lease.refill_after = time.monotonic() + SHORT_S  # no room for a full lease: stop trying for a while
        else:
            self._short[lease.startup_id] = time.monotonic() + SHORT_S

    async def _horizon(self, hold: Hold) -> float:
        """The first expiry among the vouchers the hold draws on (a voucher's expiry never changes)."""
        drawn = {voucher_id for voucher_id, amount in hold.allocations if amount > 0}
        if not drawn <= self._expiries.keys():
            for v in await self._store.list_vouchers(hold.startup_id, Kind.MODEL):
                self._expiries[v.id] = math.inf if v.expires_at is None else v.expires_at
        return min((self._expiries.get(voucher_id, -math.inf) for voucher_id in drawn), default=math.inf)

    def _retire(self, lease: Lease) -> None:
        lease.retired = True
        if self._current.get(lease.startup_id) is lease:
            del self._current[lease.startup_id]
        self._retired.add(lease)

    def on_event(self, event: LedgerEvent | None) -> None:
        """A ledger event (`vouchers.events`): a void retires the startup's lease; None retires them all."""
        if event is None:
            self._epoch += 1
            for lease in list(self._current.values()):
                self._retire(lease)
        elif event.kind is EventKind.VOUCHER_VOIDED:
            self._epochs[event.subject] = self._epochs.get(event.subject, 0) + 1
            voided = self._current.get(event.subject)
            if voided is not None:
                self._retire(voided)

    async def _close(self, lease: Lease) -> None:
        self._retire(lease)
        self._retired.discard(lease)
        try:
            await self._store.release(lease.hold_id)
        except Exception:
            log.exception("could not release a lease; its hold expires by itself",
                          extra={"startup": lease.startup_id})

    async def tend(self) -> None:
        """Release idle and retired leases, and renew the hold of every lease still in use."""
        now = self._clock.now()
        quiet = time.monotonic() - self._idle_s
        for lease in self.leases():
            if lease.idle and (lease.retired or lease.last_used <= quiet or not self._usable(lease)):
                await self._close(lease)
            elif lease.expires_at - now < self._ttl_s / 2:
                try:
                    hold = await self._store.extend(lease.hold_id, ttl_s=self._ttl_s)
                    lease.expires_at = hold.expires_at
                except (Conflict, NotFound):
                    self._retire(lease)

    async def quiesce(self, startup_id: str | None = None) -> None:
        """Release the idle leases (of one startup, or all): a balance read then shows no credit set aside
        for requests that are not running."""
        for lease in self.leases():
            if lease.idle and (startup_id is None or lease.startup_id == startup_id):
                await self._close(lease)

    async def close(self) -> None:
        """At shutdown, once no request runs: release every lease."""
        tasks = list(self._changing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in self.leases():
            await self._close(lease)

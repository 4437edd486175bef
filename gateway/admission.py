"""What a metered request was admitted with: its own hold, or a ticket on a lease (`gateway.leases`).

Either way the exchange ends it exactly once, by a charge of what was used or by a release.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.ledger import Ledger
from vouchers.models import ChargeRef, Hold, HoldStatus


class Admission(Protocol):
    async def charge(self, amount: int, ref: ChargeRef) -> None:
        """Debit what the request used; may be called again after a failure (it never charges twice)."""
        ...

    async def release(self) -> None:
        """Give back the worst case: the request used nothing."""
        ...

    async def keep_alive(self, ttl_s: float) -> None:
        """Keep a long stream's reservation from expiring."""
        ...


class HeldRequest:
    """The exact path: a hold of this request's worst case, settled once."""

    def __init__(self, store: Ledger, hold: Hold) -> None:
        self._store = store
        self.hold = hold

    async def charge(self, amount: int, ref: ChargeRef) -> None:
        await self._store.charge(self.hold.id, amount, ref)  # a final settle happens once

    async def release(self) -> None:
        if self.hold.status is HoldStatus.OPEN:
            await self._store.release(self.hold.id)

    async def keep_alive(self, ttl_s: float) -> None:
        await self._store.extend(self.hold.id, ttl_s=ttl_s)

"""Ledger events: changes a gateway replica must apply to what it remembers before the change is done.

A replica remembers which startup a key belongs to, and admits requests against credits it has set aside
(`gateway.leases`). A revoked key or a voided voucher must stop both at once, on every replica. So the
store that makes such a change tells every watching replica, and `revoke_key` / `void_voucher` return
only once each of them has applied it.

A listener is called with an event, or with None when events may have been missed (the channel was
lost, or has just been set up): it must then forget everything it remembers.

Where the store can tell them (`EventFeed.watching`), a revoked key and a voided voucher are told to every
listener watching the same ledger, and `revoke_key` / `void_voucher` return only once each listener has
heard. Redis can (`vouchers.redis_events`); SQLite cannot (`Unheard`: another process may share the file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    KEY_REVOKED = "key_revoked"  # subject: the key id
    VOUCHER_VOIDED = "voucher_voided"  # subject: the startup id


@dataclass(frozen=True)
class LedgerEvent:
    kind: EventKind
    subject: str

    def encode(self) -> str:
        return f"{self.kind.value} {self.subject}"

    @classmethod
    def decode(cls, text: str) -> LedgerEvent:
        kind, _, subject = text.partition(" ")
        return cls(EventKind(kind), subject)


Listener = Callable[[LedgerEvent | None], None]


class Listeners:
    """The listeners of one store; a listener that fails is logged, the others still hear the event."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def tell(self, event: LedgerEvent | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a ledger event listener failed on %s", event)


class EventFeed(Protocol):
    async def watch(self, listener: Listener) -> None:
        """Tell `listener` of every key revocation and voucher void on this ledger from now on, made
        through any store on it; returns once events flow (see `watching`)."""
        ...

    async def unwatch(self, listener: Listener) -> None:
        """Stop telling `listener`."""
        ...

    @property
    def watching(self) -> bool:
        """True while every event reaches this store's listeners; when it turns False they hear None."""
        ...


class Unheard:
    """The feed of a store that cannot tell its events (SQLite: another process on the same file could
    revoke a key or void a voucher unheard), so a gateway checks each request in the ledger itself."""

    async def watch(self, listener: Listener) -> None:
        """Never tells anything: `watching` stays False."""

    async def unwatch(self, listener: Listener) -> None:
        """Nothing to stop."""

    @property
    def watching(self) -> bool:
        return False

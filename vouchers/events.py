"""Ledger events: changes a gateway replica must apply to what it remembers before the change is done.

A replica remembers which startup a key belongs to, and admits requests against credits it has set aside
(`gateway.leases`). A revoked key or a voided voucher must stop both at once, on every replica. So the
store that makes such a change tells every watching replica, and `revoke_key` / `void_voucher` return
only once each of them has applied it.

A listener is called with an event, or with None when events may have been missed (the channel was
lost, or has just been set up): it must then forget everything it remembers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

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

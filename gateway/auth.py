"""Bearer authentication: startup keys by hash, and the admin token.

A key's record never changes except for its revocation, so each replica remembers which startup a key
hash belongs to. While the store's ledger events flow (`vouchers.events`), a revocation reaches every
replica before the admin call returns and removes the key from its memory, so a remembered key is
trusted as it is. While they do not, a remembered key is not trusted as active: the request's first
atomic ledger call (rate limit or hold) checks the revocation in the same step
(`Store.reserve(key_id=...)`). Either way a revoked key stops at its very next request, and an active one
costs no lookup round trip.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from vouchers.directory import Directory
from vouchers.errors import BAD_KEY, AuthenticationError
from vouchers.events import EventKind, LedgerEvent
from vouchers.keys import hash_secret

_MAX_REMEMBERED = 100_000


@dataclass(frozen=True)
class Caller:
    startup_id: str
    key_id: str
    # True when this request read the key from the store and found it active, or took it from the replica's
    # memory while revocations reach it (KeyBook's `trusted`); False when its first ledger call must check
    # the revocation (pass `check_key` to the store).
    verified: bool = True

    @property
    def check_key(self) -> str | None:
        """The key id for the store to check, or None when this request already did."""
        return None if self.verified else self.key_id


class KeyBook:
    """Key hash -> (startup, key id), for keys this replica has seen active. Bounded; never negative.

    `trusted` says whether revocations reach this book now (the store's events flow); `epoch` changes with
    every revocation heard, so a lookup that raced one is not remembered.
    """

    def __init__(self, limit: int = _MAX_REMEMBERED, trusted: Callable[[], bool] = lambda: False) -> None:
        self._known: dict[str, tuple[str, str]] = {}
        self._limit = limit
        self._trusted = trusted
        self.epoch = 0

    def recall(self, digest: str) -> Caller | None:
        known = self._known.get(digest)
        return None if known is None else Caller(known[0], known[1], verified=self._trusted())

    def learn(self, digest: str, caller: Caller, epoch: int) -> None:
        """Remember an active key read from the store when the book's epoch was `epoch`."""
        if epoch != self.epoch:
            return  # a revocation came in while the key was read: it may be this one
        if len(self._known) >= self._limit:
            self._known.clear()  # a rare full reset is cheaper than tracking recency on every request
        self._known[digest] = (caller.startup_id, caller.key_id)

    def forget(self, key_id: str) -> None:
        self.epoch += 1
        for digest, (_, kid) in list(self._known.items()):
            if kid == key_id:
                del self._known[digest]

    def on_event(self, event: LedgerEvent | None) -> None:
        """A ledger event: a revocation forgets the key; None (events may be lost) forgets every key."""
        if event is None:
            self.epoch += 1
            self._known.clear()
        elif event.kind is EventKind.KEY_REVOKED:
            self.forget(event.subject)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def startup_caller(store: Directory, request: Request, book: KeyBook | None = None) -> Caller:
    """The startup behind the request's key; 401 when the key is missing, unknown or revoked.

    Without a `book` the key is read from the store and checked now. With one, a key the replica has
    seen may come back unverified (see the module docstring).
    """
    secret = _bearer(request)
    if secret is None:
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer sk-shuqi-...'.")
    digest = hash_secret(secret)
    if book is not None and (known := book.recall(digest)) is not None:
        return known
    epoch = book.epoch if book is not None else 0
    record = await store.key_by_hash(digest)
    # The lookup is by hash, so timing reveals nothing about the secret; the compare stays constant-time anyway.
    if record is None or not hmac.compare_digest(record.key_hash, digest) or not record.active:
        raise AuthenticationError(BAD_KEY)
    caller = Caller(startup_id=record.startup_id, key_id=record.id)
    if book is not None:
        book.learn(digest, caller, epoch)
    return caller


async def verified(store: Directory, request: Request, caller: Caller) -> Caller:
    """`caller`, checked against the store now if it came from memory; 401 if the key was revoked."""
    if caller.verified:
        return caller
    return await startup_caller(store, request)  # the handler forgets a key that turns out revoked


def check_admin(request: Request, admin_token: str) -> None:
    """401 unless the request carries the admin token."""
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise AuthenticationError("This call needs the admin token.")

"""Bearer authentication: startup keys looked up by hash on every request, and the admin token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from vouchers.errors import AuthenticationError
from vouchers.keys import hash_secret
from vouchers.store import Store


@dataclass(frozen=True)
class Caller:
    startup_id: str
    key_id: str


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def startup_caller(store: Store, request: Request) -> Caller:
    """The startup behind the request's key; 401 when the key is missing, unknown or revoked.

    The key is read from the store each time (no cache) so that a revocation stops it at once.
    """
    secret = _bearer(request)
    if secret is None:
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer sk-shuqi-...'.")
    digest = hash_secret(secret)
    record = await store.key_by_hash(digest)
    # The lookup is by hash, so timing reveals nothing about the secret; the compare stays constant-time anyway.
    if record is None or not hmac.compare_digest(record.key_hash, digest) or not record.active:
        raise AuthenticationError("Incorrect API key provided.")
    return Caller(startup_id=record.startup_id, key_id=record.id)


def check_admin(request: Request, admin_token: str) -> None:
    """401 unless the request carries the admin token."""
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise AuthenticationError("This call needs the admin token.")

"""The directory: startups (the tenants) and their API keys.

Rules: a startup id is unique and not empty; a key belongs to an existing startup and is stored by the
hash of its secret, never the secret; a key id and a key hash are each unique; a revoked key stays
revoked, with the time of its first revocation. A revocation is a ledger event (`vouchers.events`):
watching listeners have heard of it when `revoke_key` returns. `Ledger.reserve` and
`RateLimiter.rate_limit` read revocations in their own atomic step.
"""

from __future__ import annotations

from typing import Protocol

from vouchers.models import ApiKey, Startup


class Directory(Protocol):
    async def create_startup(self, startup_id: str, name: str) -> Startup:
        """Create a startup; Conflict if the id exists."""
        ...

    async def get_startup(self, startup_id: str) -> Startup | None:
        """The startup, or None."""
        ...

    async def list_startups(self) -> list[Startup]:
        """Every startup, oldest first."""
        ...

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""
        ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        ...

    async def list_keys(self, startup_id: str) -> list[ApiKey]:
        """A startup's keys, oldest first."""
        ...

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once; NotFound if unknown. Revoking twice keeps the first time. Watching listeners have
        heard of it when this returns."""
        ...

"""Startups and API keys on Redis (`vouchers.directory`); a revocation is announced on the ledger's
event channel (`vouchers.redis_events`) before `revoke_key` returns."""

from __future__ import annotations

import json
from typing import Any

from vouchers.clock import Clock
from vouchers.errors import Conflict, InvalidRequest, NotFound
from vouchers.events import EventKind, LedgerEvent
from vouchers.models import ApiKey, Startup
from vouchers.redis_codec import opt_time, time_text
from vouchers.redis_events import EventChannel
from vouchers.redis_keys import RedisKeys
from vouchers.redis_scripts import ScriptRunner


async def require_startup(client: Any, keys: RedisKeys, startup_id: str) -> None:
    """NotFound unless the startup exists."""
    if not await client.hexists(keys.startups, startup_id):
        raise NotFound(f"no startup {startup_id}", param="startup_id")


class RedisDirectory:
    """The `Directory` protocol on Redis."""

    def __init__(self, client: Any, keys: RedisKeys, clock: Clock, scripts: ScriptRunner, events: EventChannel) -> None:
        # decode_responses=True makes every reply str; redis-py's stubs cannot express that, hence Any.
        self._r = client
        self._keys = keys
        self._clock = clock
        self._scripts = scripts
        self._events = events

    async def create_startup(self, startup_id: str, name: str) -> Startup:
        """Create a startup; Conflict if the id exists."""
        if not startup_id:
            raise InvalidRequest("startup id must not be empty", param="id")
        startup = Startup(id=startup_id, name=name, created_at=self._clock.now())
        record = json.dumps({"name": name, "created_at": startup.created_at})
        if not await self._r.hsetnx(self._keys.startups, startup_id, record):
            raise Conflict(f"startup {startup_id} exists", param="id")
        return startup

    async def get_startup(self, startup_id: str) -> Startup | None:
        """The startup, or None."""
        record = await self._r.hget(self._keys.startups, startup_id)
        if record is None:
            return None
        data = json.loads(record)
        return Startup(id=startup_id, name=data["name"], created_at=data["created_at"])

    async def list_startups(self) -> list[Startup]:
        """Every startup, oldest first."""
        records = await self._r.hgetall(self._keys.startups)
        startups = [
            Startup(id=sid, name=data["name"], created_at=data["created_at"])
            for sid, data in ((sid, json.loads(text)) for sid, text in records.items())
        ]
        return sorted(startups, key=lambda s: (s.created_at, s.id))

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""
        await require_startup(self._r, self._keys, key.startup_id)
        record = {k: v for k, v in key.__dict__.items() if k != "revoked_at"}
        if await self._r.hexists(self._keys.keys, key.id) or not await self._r.hsetnx(
            self._keys.keys_by_hash, key.key_hash, key.id
        ):
            raise Conflict("a key with this id or hash exists", param="key")
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.keys, key.id, json.dumps(record))
            pipe.sadd(self._keys.startup_keys(key.startup_id), key.id)
            if key.revoked_at is not None:
                pipe.hsetnx(self._keys.keys_revoked, key.id, time_text(key.revoked_at))
            await pipe.execute()
        return key

    async def _keys_by_id(self, key_ids: list[str]) -> list[ApiKey]:
        if not key_ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(self._keys.keys, key_ids)
            pipe.hmget(self._keys.keys_revoked, key_ids)
            records, revoked = await pipe.execute()
        return [
            ApiKey(**json.loads(record), revoked_at=opt_time(when))
            for record, when in zip(records, revoked, strict=True)
            if record is not None
        ]

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        reply = await self._scripts.run(
            "key_lookup", [self._keys.keys_by_hash, self._keys.keys, self._keys.keys_revoked], [key_hash]
        )
        if reply is None:
            return None
        record, revoked = reply
        return ApiKey(**json.loads(record), revoked_at=opt_time(revoked))

    async def list_keys(self, startup_id: str) -> list[ApiKey]:
        """A startup's keys, oldest first."""
        found = await self._keys_by_id(sorted(await self._r.smembers(self._keys.startup_keys(startup_id))))
        return sorted(found, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once; NotFound if unknown. Revoking twice keeps the first time."""
        if not await self._r.hexists(self._keys.keys, key_id):
            raise NotFound(f"no key {key_id}", param="key_id")
        await self._r.hsetnx(self._keys.keys_revoked, key_id, time_text(self._clock.now()))
        await self._events.announce(LedgerEvent(EventKind.KEY_REVOKED, key_id))
        return (await self._keys_by_id([key_id]))[0]

"""Ledger events over Redis: a pub/sub channel, and an acknowledgement list per event.

`announce` publishes an event and waits until every subscriber that received it has applied it (each
pushes one entry onto the event's ack list after its listeners ran), so a revocation is in force on
every replica when the admin call that made it returns. A replica whose subscription is down does not
count, and is not trusted meanwhile: its listeners heard None (forget everything) when it went down.

The subscription has a connection of its own that never reconnects by itself (redis-py's retries would
subscribe again silently, hiding the gap in which events were lost): a lost connection is seen, heard as
None, and opened again here. It pings every second; no pong for three seconds counts as lost too (a
half-open socket would otherwise look healthy while events no longer arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from vouchers.events import LedgerEvent, Listener, Listeners
from vouchers.redis_keys import RedisKeys

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT_S = 2.0  # a replica that has not applied an event by then is logged, not waited for
PING_EVERY_S = 1.0
ACK_KEEP_MS = 10_000


class EventChannel:
    """One store's side of the channel: it announces changes and, once watched, hears everyone's."""

    def __init__(self, client: Any, url: str, keys: RedisKeys) -> None:
        self._r = client
        self._url = url
        self._keys = keys
        self._listeners = Listeners()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.watching = False

    async def announce(self, event: LedgerEvent) -> None:
        """Publish `event`; return once every subscriber that got it has applied it (or the timeout)."""
        nonce = secrets.token_hex(8)
        ack = self._keys.event_ack(nonce)
        receivers = int(await self._r.publish(self._keys.events, f"{nonce} {event.encode()}"))
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT_S
        heard = 0
        try:
            while heard < receivers:
                left = deadline - time.monotonic()
                if left <= 0 or await self._r.blpop([ack], timeout=left) is None:
                    log.error("%d of %d gateway replicas did not confirm %s within %.1f s",
                              receivers - heard, receivers, event, ANNOUNCE_TIMEOUT_S)
                    return
                heard += 1
        finally:
            await self._r.delete(ack)

    async def watch(self, listener: Listener) -> None:
        """Add a listener; the first one starts the subscription, and this waits (5 s at most) until it is up."""
        self._listeners.add(listener)
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="ledger events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)

    async def unwatch(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        if not self._listeners:
            await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            own: Any = aioredis.Redis.from_url(self._url, decode_responses=True, retry=Retry(NoBackoff(), 0))
            pubsub = own.pubsub()
            try:
                await pubsub.subscribe(self._keys.events)
                await self._serve(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ledger events: subscription lost (%s); retrying", exc)
            finally:
                self._down()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await own.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _serve(self, pubsub: Any) -> None:
        last_pong = next_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=PING_EVERY_S)
            now = time.monotonic()
            if message is not None:
                # Anything read shows the connection alive. (The pong itself arrives mangled: with
                # decode_responses redis-py parses a subscribed "PONG" as {'type': 'P', ...}.)
                last_pong = now
                kind = message["type"]
                if kind == "subscribe":
                    # From here on every event arrives: what was remembered before may be stale.
                    self._listeners.tell(None)
                    self.watching = True
                    self._ready.set()
                elif kind == "message":
                    await self._apply(message["data"])
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + PING_EVERY_S
            if now - last_pong > 3 * PING_EVERY_S:
                raise ConnectionError("no pong from Redis for 3 s")

    async def _apply(self, data: str) -> None:
        nonce, _, text = data.partition(" ")
        try:
            event = LedgerEvent.decode(text)
        except ValueError:
            log.warning("ledger events: ignoring an unknown event %r", text)
            event = None
        if event is not None:
            self._listeners.tell(event)
        ack = self._keys.event_ack(nonce)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.rpush(ack, "1")
            pipe.pexpire(ack, ACK_KEEP_MS)
            await pipe.execute()

    def _down(self) -> None:
        if self.watching:
            self.watching = False
            self._ready.clear()
            self._listeners.tell(None)

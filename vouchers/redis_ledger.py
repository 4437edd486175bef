"""The ledger on Redis (`vouchers.ledger`), shared by gateway replicas: every check-and-debit in one Lua script.

Keys come from `vouchers.redis_keys`; scripts from `vouchers/lua` (run by `vouchers.redis_scripts`), the
atomic copy of `vouchers.rules`. Amounts are integers (exact in Lua below 2^53, which bounds `MAX_AMOUNT`);
times are floats stored as their `repr`, so they read back exactly. The store's clock, never Redis TIME,
decides expiry. A void is announced on the ledger's event channel before `void_voucher` returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from typing import Any

from vouchers import rules
from vouchers.clock import Clock
from vouchers.errors import BAD_KEY, AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.events import EventKind, LedgerEvent
from vouchers.keys import new_id
from vouchers.models import Balance, ChargeRef, Hold, JournalLine, Voucher
from vouchers.redis_codec import (
    HOLD_FIELDS,
    KINDS,
    USAGE_SEP,
    hold_from,
    hold_info,
    line_from,
    line_tail,
    time_text,
    voucher_from,
)
from vouchers.redis_directory import require_startup
from vouchers.redis_events import EventChannel
from vouchers.redis_keys import RedisKeys, StartupKeys
from vouchers.redis_scripts import ScriptRunner
from vouchers.units import Kind

# Remembers which startup owns recent holds, so settle needs no lookup round trip.
_OWNER_CACHE = 65536
_STARTUP_KEYS_CACHE = 4096


class RedisLedger:
    """The `Ledger` protocol on Redis; any number of instances may share one server and namespace."""

    def __init__(self, client: Any, keys: RedisKeys, clock: Clock, scripts: ScriptRunner, events: EventChannel) -> None:
        # decode_responses=True makes every reply str; redis-py's stubs cannot express that, hence Any.
        self._r = client
        self._keys = keys
        self._clock = clock
        self._scripts = scripts
        self._events = events
        self._owners: OrderedDict[str, tuple[str, Kind]] = OrderedDict()
        self._startup_keys: dict[str, StartupKeys] = {}

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
        rules.check_amount(amount, "amount")
        await require_startup(self._r, self._keys, startup_id)
        now = self._clock.now()
        start = now if effective_at is None else effective_at
        rules.check_validity(start, expires_at)
        voucher = Voucher(
            id=new_id("vch"),
            startup_id=startup_id,
            kind=Kind(kind),
            amount=amount,
            effective_at=start,
            expires_at=expires_at,
            priority=priority,
            note=note,
            created_at=now,
        )
        fields = {
            "id": voucher.id,
            "startup_id": startup_id,
            "kind": voucher.kind.value,
            "amount": str(amount),
            "effective_at": time_text(voucher.effective_at),
            "expires_at": "" if expires_at is None else time_text(expires_at),
            "priority": str(priority),
            "note": note,
            "created_at": time_text(now),
            "voided_at": "",
            "spent": "0",
            "held": "0",
        }
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.voucher(startup_id, voucher.id), mapping=fields)
            pipe.hset(self._keys.voucher_owner, voucher.id, startup_id)
            pipe.sadd(self._keys.vouchers(startup_id, voucher.kind), voucher.id)
            pipe.sadd(self._keys.live_vouchers(startup_id, voucher.kind), voucher.id)
            await pipe.execute()
        return voucher

    async def _voucher_key(self, voucher_id: str) -> str | None:
        owner = await self._r.hget(self._keys.voucher_owner, voucher_id)
        return None if owner is None else self._keys.voucher(owner, voucher_id)

    async def void_voucher(self, voucher_id: str) -> Voucher:
        """Stop a voucher burning; past usage stands. NotFound if unknown."""
        key = await self._voucher_key(voucher_id)
        if key is None:
            raise NotFound(f"no voucher {voucher_id}", param="voucher_id")
        await self._scripts.run("void", [key], [time_text(self._clock.now())])
        voucher = voucher_from(await self._r.hgetall(key))
        await self._events.announce(LedgerEvent(EventKind.VOUCHER_VOIDED, voucher.startup_id))
        return voucher

    async def get_voucher(self, voucher_id: str) -> Voucher | None:
        """The voucher, or None."""
        key = await self._voucher_key(voucher_id)
        if key is None:
            return None
        fields = await self._r.hgetall(key)
        return voucher_from(fields) if fields else None

    async def list_vouchers(self, startup_id: str, kind: Kind | None = None) -> list[Voucher]:
        """A startup's vouchers (of one kind, or both) in burn order."""
        kinds = [Kind(kind)] if kind is not None else list(Kind)
        ids: list[str] = []
        for k in kinds:
            ids.extend(await self._r.smembers(self._keys.vouchers(startup_id, k)))
        async with self._r.pipeline(transaction=False) as pipe:
            for vid in ids:
                pipe.hgetall(self._keys.voucher(startup_id, vid))
            rows = await pipe.execute()
        return sorted((voucher_from(f) for f in rows if f), key=rules.burn_key)

    # holds

    def _sk(self, startup_id: str) -> StartupKeys:
        sk = self._startup_keys.get(startup_id)
        if sk is None:
            if len(self._startup_keys) >= _STARTUP_KEYS_CACHE:
                self._startup_keys.clear()
            sk = self._startup_keys[startup_id] = self._keys.startup(startup_id)
        return sk

    def _remember(self, hold_id: str, startup_id: str, kind: Kind) -> None:
        self._owners[hold_id] = (startup_id, kind)
        if len(self._owners) > _OWNER_CACHE:
            self._owners.popitem(last=False)

    async def _owner(self, hold_id: str) -> tuple[str, Kind]:
        owner = self._owners.get(hold_id)
        if owner is not None:
            return owner
        value = await self._r.hget(self._keys.hold_owner, hold_id)
        if value is None:
            raise NotFound(f"no hold {hold_id}", param="hold_id")
        kind, _, startup_id = value.partition(":")
        self._remember(hold_id, startup_id, KINDS[kind])
        return startup_id, KINDS[kind]

    async def reserve(
        self, startup_id: str, kind: Kind, amount: int, *, ttl_s: float, idempotency_key: str,
        key_id: str | None = None,
    ) -> Hold:
        """Hold `amount` atomically or raise InsufficientQuota; same key returns the first hold."""
        rules.check_amount(amount, "amount", allow_zero=True)
        rules.check_ttl(ttl_s)
        kind = KINDS.get(kind) or Kind(kind)  # a plain string works too; an unknown one is a ValueError
        now = self._clock.now()
        hold_id = new_id("hold")
        sk = self._sk(startup_id)
        reply = await self._scripts.run(
            "reserve",
            [sk.live(kind), sk.open_holds, sk.hold_idempotency, self._keys.hold_owner, sk.hold(hold_id),
             self._keys.keys_revoked, self._keys.startups],
            [
                sk.voucher_prefix,
                sk.hold_prefix,
                time_text(now),
                time_text(now + ttl_s),
                str(amount),
                idempotency_key,
                hold_id,
                f"{kind}:{startup_id}",
                hold_info(hold_id, startup_id, kind, idempotency_key, now),
                key_id or "",
                startup_id,
            ],
        )
        if reply[0] == "revoked":
            raise AuthenticationError(BAD_KEY)
        if reply[0] == "nostartup":
            raise NotFound(f"no startup {startup_id}", param="startup_id")
        if reply[0] == "insufficient":
            raise InsufficientQuota(
                f"not enough {kind.value} quota: {amount} requested, {reply[1]} available", param="amount"
            )
        hold = hold_from(reply[1:])
        self._remember(hold.id, hold.startup_id, hold.kind)  # a repeated key may name another kind
        return hold if hold.id == hold_id else dataclasses.replace(hold, replayed=True)

    async def extend(self, hold_id: str, *, ttl_s: float, add_amount: int = 0) -> Hold:
        """Push an open hold's expiry to now + ttl_s and optionally hold more (all-or-nothing)."""
        rules.check_ttl(ttl_s)
        rules.check_amount(add_amount, "add_amount", allow_zero=True)
        startup_id, kind = await self._owner(hold_id)
        now = self._clock.now()
        k = self._keys
        reply = await self._scripts.run(
            "extend",
            [k.hold(startup_id, hold_id), k.startup_open_holds(startup_id), k.live_vouchers(startup_id, kind)],
            [
                k.voucher_prefix(startup_id),
                time_text(now),
                time_text(now + ttl_s),
                str(add_amount),
                hold_id,
                k.hold_prefix(startup_id),
            ],
        )
        status = reply[0]
        if status == "notfound":
            raise NotFound(f"no hold {hold_id}", param="hold_id")
        if status == "closed":
            raise Conflict(f"hold {hold_id} is {reply[1]}", param="hold_id")
        if status == "expired":
            raise Conflict(f"hold {hold_id} has expired", param="hold_id")
        if status == "insufficient":
            raise InsufficientQuota(
                f"not enough {kind.value} quota: {add_amount} requested, {reply[1]} available", param="add_amount"
            )
        return hold_from(reply[1:])

    async def settle(
        self,
        hold_id: str,
        actual: int,
        ref: ChargeRef,
        *,
        final: bool = True,
        idempotency_key: str | None = None,
    ) -> JournalLine:
        """Debit `actual` against a hold; see `vouchers.ledger` for the exact rules."""
        return line_from(await self._settle(hold_id, actual, ref, final, idempotency_key))

    async def charge(self, hold_id: str, actual: int, ref: ChargeRef) -> None:
        """`settle(hold_id, actual, ref, final=True)` without reading back its journal line."""
        await self._settle(hold_id, actual, ref, True, None)

    async def _settle(
        self, hold_id: str, actual: int, ref: ChargeRef, final: bool, idempotency_key: str | None
    ) -> str:
        """Run the settle script; the journal line in its stored form."""
        rules.check_amount(actual, "actual", allow_zero=True)
        if not final and idempotency_key is None:
            raise InvalidRequest("a partial settle needs its own idempotency key", param="idempotency_key")
        startup_id, kind = await self._owner(hold_id)
        label = (ref.model if kind is Kind.MODEL else ref.gpu_type) or ""
        now = self._clock.now()
        # A final settle without a key is found through the hold, which remembers its final line.
        key = idempotency_key if idempotency_key is not None else f"settle:{hold_id}"
        k, sk = self._keys, self._sk(startup_id)
        reply = await self._scripts.run(
            "settle",
            [
                sk.hold(hold_id),
                sk.open_holds,
                sk.settle_idempotency,
                k.journal_seq,
                k.journal_lines,
                sk.journal,
                k.usage,
                sk.live(kind),
            ],
            [
                sk.voucher_prefix,
                time_text(now),
                str(actual),
                "1" if final else "0",
                "" if idempotency_key is None else idempotency_key,
                line_tail(now, startup_id, kind, key, hold_id, ref),
                USAGE_SEP.join((startup_id, kind, label, "")),
                str(ref.prompt_tokens),
                str(ref.completion_tokens),
                hold_id,
                "0" if idempotency_key is None else "1",
            ],
        )
        if reply[0] == "notfound":
            raise NotFound(f"no hold {hold_id}", param="hold_id")
        line: str = reply[1]
        return line

    async def _release(self, hold_id: str, *, only_expired: bool) -> tuple[bool, Hold]:
        startup_id, _ = await self._owner(hold_id)
        k = self._keys
        reply = await self._scripts.run(
            "release",
            [k.hold(startup_id, hold_id), k.startup_open_holds(startup_id)],
            [k.voucher_prefix(startup_id), time_text(self._clock.now()), "1" if only_expired else "0", hold_id],
        )
        if reply[0] == "notfound":
            raise NotFound(f"no hold {hold_id}", param="hold_id")
        return bool(reply[1]), hold_from(reply[2:])

    async def release(self, hold_id: str) -> Hold:
        """Free what an open hold still holds; NotFound if unknown."""
        return (await self._release(hold_id, only_expired=False))[1]

    async def get_hold(self, hold_id: str) -> Hold | None:
        """The hold, or None."""
        try:
            startup_id, _ = await self._owner(hold_id)
        except NotFound:
            return None
        fields = await self._r.hmget(self._keys.hold(startup_id, hold_id), HOLD_FIELDS)
        return hold_from(fields) if fields[0] is not None else None

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        # Each startup indexes its open holds by expiry; the startups hash is the list of startups.
        startups = await self._r.hkeys(self._keys.startups)
        now = time_text(self._clock.now())
        async with self._r.pipeline(transaction=False) as pipe:
            for startup_id in startups:
                pipe.zrangebyscore(self._keys.startup_open_holds(startup_id), "-inf", now)
            due = [hold_id for ids in await pipe.execute() for hold_id in ids]
        # Concurrent calls go out as one batch; each release still checks the expiry inside its script.
        outcomes = await asyncio.gather(*(self._reap_one(hold_id) for hold_id in due))
        return sum(outcomes)

    async def _reap_one(self, hold_id: str) -> int:
        try:
            released, _ = await self._release(hold_id, only_expired=True)
        except NotFound:
            return 0
        return int(released)

    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        await require_startup(self._r, self._keys, startup_id)
        now = self._clock.now()
        vouchers = rules.burn_order(await self.list_vouchers(startup_id), now)
        return Balance(
            startup_id=startup_id,
            model=rules.kind_balance(v for v in vouchers if v.kind is Kind.MODEL),
            compute=rules.kind_balance(v for v in vouchers if v.kind is Kind.COMPUTE),
            vouchers=tuple(vouchers),
        )

"""The Redis store: the ledger shared by gateway replicas, every check-and-debit in one Lua script.

Keys come from `vouchers.redis_keys`; scripts from `vouchers/lua` (run by `vouchers.redis_scripts`).
Amounts are integers (exact in Lua below 2^53, which bounds `MAX_AMOUNT`); times are floats stored as
their `repr`, so they read back exactly. The store's clock, never Redis TIME, decides expiry and windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from vouchers.clock import Clock
from vouchers.errors import BAD_KEY, AuthenticationError, Conflict, InsufficientQuota, InvalidRequest, NotFound
from vouchers.events import EventKind, LedgerEvent, Listener
from vouchers.keys import new_id
from vouchers.models import (
    ApiKey,
    Balance,
    ChargeRef,
    Hold,
    JournalLine,
    Limits,
    Price,
    RateDecision,
    Startup,
    UsageTotal,
    Voucher,
    WorkerRecord,
)
from vouchers.redis_codec import (
    HOLD_FIELDS,
    KINDS,
    USAGE_SEP,
    check_amount,
    check_ttl,
    hold_from,
    hold_info,
    kind_balance,
    line_from,
    line_tail,
    opt_time,
    time_text,
    voucher_from,
    worker_json,
)
from vouchers.redis_events import EventChannel
from vouchers.redis_keys import RedisKeys, StartupKeys
from vouchers.redis_scripts import ScriptRunner
from vouchers.units import Kind

log = logging.getLogger(__name__)

WINDOW_S = 60
# Enough concurrent requests of one gateway to share connections without queueing for one.
DEFAULT_POOL_SIZE = 64
# Remembers which startup owns recent holds, so settle needs no lookup round trip.
_OWNER_CACHE = 65536
_STARTUP_KEYS_CACHE = 4096


class RedisStore:
    """`vouchers.store.Store` on Redis; any number of instances may share one server and namespace."""

    def __init__(self, client: aioredis.Redis, url: str, *, clock: Clock, namespace: str = "shuqi") -> None:
        # decode_responses=True makes every reply str; redis-py's stubs cannot express that, hence Any.
        self._r: Any = client
        self._clock = clock
        self.keys = RedisKeys(namespace)
        self._scripts = ScriptRunner(client, url)
        self._events = EventChannel(client, url, self.keys)
        self._owners: OrderedDict[str, tuple[str, Kind]] = OrderedDict()
        self._startup_keys: dict[str, StartupKeys] = {}

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock, namespace: str = "shuqi", pool_size: int = DEFAULT_POOL_SIZE
    ) -> RedisStore:
        """Connect, load the scripts and return a ready store."""
        # Blocking pool: a burst beyond pool_size waits for a free connection instead of failing.
        # Plain reads and writes retry on a dropped connection (a server restart or failover); the
        # scripts' own connection reconnects before a batch, never after one was sent.
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=pool_size, retry=retry
        )
        client = aioredis.Redis.from_pool(pool)
        store = cls(client, url, clock=clock, namespace=namespace)
        try:
            await store._scripts.load()
            await store._check_server()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def _check_server(self) -> None:
        # The ledger is money: say so at start when the server could lose it or evict it (deploy/redis.md).
        persistence = await self._r.info("persistence")
        if not int(persistence.get("aof_enabled", 0)):
            log.warning("Redis runs without AOF (appendonly no): a restart loses the ledger's recent writes")
        policy = (await self._r.info("memory")).get("maxmemory_policy", "noeviction")
        if policy != "noeviction":
            log.warning("Redis maxmemory-policy is %s: it may evict ledger keys; use noeviction", policy)

    async def close(self) -> None:
        """Stop hearing events, wait for batched calls in flight, then close the connections."""
        await self._events.close()
        await self._scripts.aclose()
        await self._r.aclose()

    # ledger events (vouchers.redis_events)

    async def watch(self, listener: Listener) -> None:
        await self._events.watch(listener)

    async def unwatch(self, listener: Listener) -> None:
        await self._events.unwatch(listener)

    @property
    def watching(self) -> bool:
        return self._events.watching

    # startups and keys

    async def create_startup(self, startup_id: str, name: str) -> Startup:
        """Create a startup; Conflict if the id exists."""
        if not startup_id:
            raise InvalidRequest("startup id must not be empty", param="id")
        startup = Startup(id=startup_id, name=name, created_at=self._clock.now())
        record = json.dumps({"name": name, "created_at": startup.created_at})
        if not await self._r.hsetnx(self.keys.startups, startup_id, record):
            raise Conflict(f"startup {startup_id} exists", param="id")
        return startup

    async def get_startup(self, startup_id: str) -> Startup | None:
        """The startup, or None."""
        record = await self._r.hget(self.keys.startups, startup_id)
        if record is None:
            return None
        data = json.loads(record)
        return Startup(id=startup_id, name=data["name"], created_at=data["created_at"])

    async def list_startups(self) -> list[Startup]:
        """Every startup, oldest first."""
        records = await self._r.hgetall(self.keys.startups)
        startups = [
            Startup(id=sid, name=data["name"], created_at=data["created_at"])
            for sid, data in ((sid, json.loads(text)) for sid, text in records.items())
        ]
        return sorted(startups, key=lambda s: (s.created_at, s.id))

    async def _require_startup(self, startup_id: str) -> None:
        if not await self._r.hexists(self.keys.startups, startup_id):
            raise NotFound(f"no startup {startup_id}", param="startup_id")

    async def add_key(self, key: ApiKey) -> ApiKey:
        """Store a key record (the hash, never the secret); NotFound if the startup does not exist."""
        await self._require_startup(key.startup_id)
        record = {k: v for k, v in key.__dict__.items() if k != "revoked_at"}
        if await self._r.hexists(self.keys.keys, key.id) or not await self._r.hsetnx(
            self.keys.keys_by_hash, key.key_hash, key.id
        ):
            raise Conflict("a key with this id or hash exists", param="key")
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.keys, key.id, json.dumps(record))
            pipe.sadd(self.keys.startup_keys(key.startup_id), key.id)
            if key.revoked_at is not None:
                pipe.hsetnx(self.keys.keys_revoked, key.id, time_text(key.revoked_at))
            await pipe.execute()
        return key

    async def _keys_by_id(self, key_ids: list[str]) -> list[ApiKey]:
        if not key_ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.keys, key_ids)
            pipe.hmget(self.keys.keys_revoked, key_ids)
            records, revoked = await pipe.execute()
        return [
            ApiKey(**json.loads(record), revoked_at=opt_time(when))
            for record, when in zip(records, revoked, strict=True)
            if record is not None
        ]

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        reply = await self._scripts.run(
            "key_lookup", [self.keys.keys_by_hash, self.keys.keys, self.keys.keys_revoked], [key_hash]
        )
        if reply is None:
            return None
        record, revoked = reply
        return ApiKey(**json.loads(record), revoked_at=opt_time(revoked))

    async def list_keys(self, startup_id: str) -> list[ApiKey]:
        """A startup's keys, oldest first."""
        found = await self._keys_by_id(sorted(await self._r.smembers(self.keys.startup_keys(startup_id))))
        return sorted(found, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once; NotFound if unknown. Revoking twice keeps the first time."""
        if not await self._r.hexists(self.keys.keys, key_id):
            raise NotFound(f"no key {key_id}", param="key_id")
        await self._r.hsetnx(self.keys.keys_revoked, key_id, time_text(self._clock.now()))
        await self._events.announce(LedgerEvent(EventKind.KEY_REVOKED, key_id))
        return (await self._keys_by_id([key_id]))[0]

    # vouchers

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
        check_amount(amount, "amount")
        await self._require_startup(startup_id)
        now = self._clock.now()
        start = now if effective_at is None else effective_at
        if expires_at is not None and expires_at <= start:
            raise InvalidRequest("expires_at must be after effective_at", param="expires_at")
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
            pipe.hset(self.keys.voucher(startup_id, voucher.id), mapping=fields)
            pipe.hset(self.keys.voucher_owner, voucher.id, startup_id)
            pipe.sadd(self.keys.vouchers(startup_id, voucher.kind), voucher.id)
            pipe.sadd(self.keys.live_vouchers(startup_id, voucher.kind), voucher.id)
            await pipe.execute()
        return voucher

    async def _voucher_key(self, voucher_id: str) -> str | None:
        owner = await self._r.hget(self.keys.voucher_owner, voucher_id)
        return None if owner is None else self.keys.voucher(owner, voucher_id)

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
            ids.extend(await self._r.smembers(self.keys.vouchers(startup_id, k)))
        async with self._r.pipeline(transaction=False) as pipe:
            for vid in ids:
                pipe.hgetall(self.keys.voucher(startup_id, vid))
            rows = await pipe.execute()
        return sorted((voucher_from(f) for f in rows if f), key=Voucher.burn_key)

    # holds

    def _sk(self, startup_id: str) -> StartupKeys:
        sk = self._startup_keys.get(startup_id)
        if sk is None:
            if len(self._startup_keys) >= _STARTUP_KEYS_CACHE:
                self._startup_keys.clear()
            sk = self._startup_keys[startup_id] = self.keys.startup(startup_id)
        return sk

    def _remember(self, hold_id: str, startup_id: str, kind: Kind) -> None:
        self._owners[hold_id] = (startup_id, kind)
        if len(self._owners) > _OWNER_CACHE:
            self._owners.popitem(last=False)

    async def _owner(self, hold_id: str) -> tuple[str, Kind]:
        owner = self._owners.get(hold_id)
        if owner is not None:
            return owner
        value = await self._r.hget(self.keys.hold_owner, hold_id)
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
        check_amount(amount, "amount", allow_zero=True)
        check_ttl(ttl_s)
        kind = KINDS.get(kind) or Kind(kind)  # a plain string works too; an unknown one is a ValueError
        now = self._clock.now()
        hold_id = new_id("hold")
        sk = self._sk(startup_id)
        reply = await self._scripts.run(
            "reserve",
            [sk.live(kind), sk.open_holds, sk.hold_idempotency, self.keys.hold_owner, sk.hold(hold_id),
             self.keys.keys_revoked, self.keys.startups],
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
        check_ttl(ttl_s)
        check_amount(add_amount, "add_amount", allow_zero=True)
        startup_id, kind = await self._owner(hold_id)
        now = self._clock.now()
        k = self.keys
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
        """Debit `actual` against a hold; see `vouchers.store` for the exact rules."""
        return line_from(await self._settle(hold_id, actual, ref, final, idempotency_key))

    async def charge(self, hold_id: str, actual: int, ref: ChargeRef) -> None:
        """`settle(hold_id, actual, ref, final=True)` without reading back its journal line."""
        await self._settle(hold_id, actual, ref, True, None)

    async def _settle(
        self, hold_id: str, actual: int, ref: ChargeRef, final: bool, idempotency_key: str | None
    ) -> str:
        """Run the settle script; the journal line in its stored form."""
        check_amount(actual, "actual", allow_zero=True)
        if not final and idempotency_key is None:
            raise InvalidRequest("a partial settle needs its own idempotency key", param="idempotency_key")
        startup_id, kind = await self._owner(hold_id)
        label = (ref.model if kind is Kind.MODEL else ref.gpu_type) or ""
        now = self._clock.now()
        # A final settle without a key is found through the hold, which remembers its final line.
        key = idempotency_key if idempotency_key is not None else f"settle:{hold_id}"
        k, sk = self.keys, self._sk(startup_id)
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
        k = self.keys
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
        fields = await self._r.hmget(self.keys.hold(startup_id, hold_id), HOLD_FIELDS)
        return hold_from(fields) if fields[0] is not None else None

    async def reap_holds(self) -> int:
        """Release every open hold whose TTL has passed; returns how many."""
        # Each startup indexes its open holds by expiry; the startups hash is the list of startups.
        startups = await self._r.hkeys(self.keys.startups)
        now = time_text(self._clock.now())
        async with self._r.pipeline(transaction=False) as pipe:
            for startup_id in startups:
                pipe.zrangebyscore(self.keys.startup_open_holds(startup_id), "-inf", now)
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

    # reading the ledger

    async def balance(self, startup_id: str) -> Balance:
        """Granted, spent, held and remaining per kind over the vouchers in force, with the vouchers."""
        await self._require_startup(startup_id)
        now = self._clock.now()
        vouchers = [v for v in await self.list_vouchers(startup_id) if v.in_force(now)]
        return Balance(
            startup_id=startup_id,
            model=kind_balance([v for v in vouchers if v.kind is Kind.MODEL]),
            compute=kind_balance([v for v in vouchers if v.kind is Kind.COMPUTE]),
            vouchers=tuple(vouchers),
        )

    async def journal(
        self,
        startup_id: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[JournalLine]:
        """Journal lines in order of `seq` (oldest first); `since` inclusive, `until` exclusive."""
        startups = [startup_id] if startup_id is not None else await self._r.hkeys(self.keys.startups)
        low = "-inf" if since is None else time_text(since)
        high = "+inf" if until is None else f"({time_text(until)}"
        async with self._r.pipeline(transaction=False) as pipe:
            for s in startups:
                pipe.zrangebyscore(self.keys.startup_journal(s), low, high)
            seqs = sorted(int(seq) for found in await pipe.execute() for seq in found)
        if limit is not None:
            seqs = seqs[: max(limit, 0)]
        if not seqs:
            return []
        lines = await self._r.hmget(self.keys.journal_lines, seqs)
        return [line_from(text) for text in lines if text is not None]

    async def usage_totals(self) -> list[UsageTotal]:
        """Running debit totals per startup, kind and model or gpu type (for metrics)."""
        totals: dict[tuple[str, str, str], dict[str, int]] = {}
        for field, value in (await self._r.hgetall(self.keys.usage)).items():
            startup_id, kind, label, name = field.split(USAGE_SEP)
            totals.setdefault((startup_id, kind, label), {})[name] = int(value)
        return [
            UsageTotal(
                s, Kind(kind), label, tot.get("amount", 0), tot.get("prompt_tokens", 0), tot.get("completion_tokens", 0)
            )
            for (s, kind, label), tot in sorted(totals.items())
        ]

    # prices and limits

    async def set_price(self, price: Price) -> Price:
        """Set a model's price."""
        await self._r.hset(self.keys.prices, price.model, json.dumps(price.__dict__))
        return price

    async def keep_answer(self, startup_id: str, key: str, answer: bytes, *, ttl_s: float,
                          budget_bytes: int | None = None) -> bool:
        """Keep a request's answer (UTF-8 text, such as JSON) under its idempotency key; Redis drops it
        after `ttl_s`. False (nothing kept) past the startup's `budget_bytes`: the script keeps a running
        total of the startup's kept bytes, less the answers whose time is up."""
        check_ttl(ttl_s)
        try:
            text = answer.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest("an answer to keep must be UTF-8 text", param="answer") from exc
        # The store's clock decides when it is up, as for holds; Redis's own expiry only clears it away.
        now = self._clock.now()
        k = self.keys
        kept = await self._scripts.run(
            "keep_answer",
            [k.answer(startup_id, key), k.answers_index(startup_id), k.answers_sizes(startup_id),
             k.answers_bytes(startup_id)],
            [time_text(now), time_text(now + ttl_s), str(max(1, round(ttl_s * 1000))),
             f"{now + ttl_s!r}|{text}", str(len(answer)), "" if budget_bytes is None else str(budget_bytes), key],
        )
        return bool(kept)

    async def kept_answer(self, startup_id: str, key: str) -> bytes | None:
        """The answer kept under this key, or None."""
        record = await self._r.get(self.keys.answer(startup_id, key))
        if record is None:
            return None
        expires_at, _, text = str(record).partition("|")
        return text.encode() if self._clock.now() < float(expires_at) else None

    async def get_price(self, model: str) -> Price | None:
        """A model's price, or None."""
        record = await self._r.hget(self.keys.prices, model)
        return None if record is None else Price(**json.loads(record))

    async def list_prices(self) -> list[Price]:
        """Every price, by model."""
        records = await self._r.hgetall(self.keys.prices)
        return [Price(**json.loads(records[m])) for m in sorted(records)]

    async def set_limits(self, startup_id: str, limits: Limits) -> Limits:
        """Set a startup's rate limits; NotFound if the startup does not exist."""
        await self._require_startup(startup_id)
        await self._r.hset(self.keys.limits, startup_id, json.dumps(limits.__dict__))
        return limits

    async def get_limits(self, startup_id: str) -> Limits:
        """A startup's rate limits (none unless set)."""
        record = await self._r.hget(self.keys.limits, startup_id)
        return Limits() if record is None else Limits(**json.loads(record))

    async def rate_limit(
        self, startup_id: str, limits: Limits, *, requests: int, tokens: int, key_id: str | None = None
    ) -> RateDecision:
        """Count a request against per-minute windows shared by every replica; counts only if allowed."""
        now = self._clock.now()
        window = math.floor(now / WINDOW_S) * WINDOW_S
        reset_s = window + WINDOW_S - now
        if limits.rpm is None and limits.tpm is None:
            return RateDecision(True, None, None, None, None, reset_s)
        reply = await self._scripts.run(
            "rate_limit",
            [self.keys.rate_window(startup_id, window), self.keys.keys_revoked],
            [
                "" if limits.rpm is None else str(limits.rpm),
                "" if limits.tpm is None else str(limits.tpm),
                str(requests),
                str(tokens),
                str(2 * WINDOW_S * 1000),
                key_id or "",
            ],
        )
        if reply[0] == "revoked":
            raise AuthenticationError(BAD_KEY)
        allowed, counted_r, counted_t = reply
        ok = bool(int(allowed))
        return RateDecision(
            allowed=ok,
            limit_requests=limits.rpm,
            remaining_requests=None if limits.rpm is None else max(limits.rpm - int(counted_r), 0),
            limit_tokens=limits.tpm,
            remaining_tokens=None if limits.tpm is None else max(limits.tpm - int(counted_t), 0),
            reset_s=reset_s,
            retry_after_s=0.0 if ok else reset_s,
        )

    # worker registry

    async def register_worker(self, worker: WorkerRecord, *, ttl_s: float) -> None:
        """Add or refresh a worker; it drops out of list_workers ttl_s after its last heartbeat."""
        check_ttl(ttl_s)
        now = self._clock.now()
        key = self.keys.worker(worker.id)
        old_model = await self._r.hget(key, "model")
        async with self._r.pipeline(transaction=True) as pipe:
            if old_model is not None and old_model != worker.model:
                pipe.zrem(self.keys.workers_by_model(old_model), worker.id)
            fields = {"record": worker_json(worker), "model": worker.model, "heartbeat_at": time_text(now)}
            pipe.hset(key, mapping={**fields, "ttl_s": time_text(ttl_s)})
            pipe.zadd(self.keys.workers, {worker.id: now + ttl_s})
            pipe.zadd(self.keys.workers_by_model(worker.model), {worker.id: now + ttl_s})
            await pipe.execute()

    async def heartbeat_worker(self, worker_id: str, *, ttl_s: float) -> bool:
        """Refresh a worker's TTL; False if it is not registered (it should register again)."""
        check_ttl(ttl_s)
        now = self._clock.now()
        refreshed = await self._scripts.run(
            "heartbeat",
            [self.keys.worker(worker_id), self.keys.workers],
            [time_text(now), time_text(ttl_s), time_text(now + ttl_s), worker_id, self.keys.workers_by_model("")],
        )
        return bool(int(refreshed))

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker from the registry."""
        key = self.keys.worker(worker_id)
        model = await self._r.hget(key, "model")
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(self.keys.workers, worker_id)
            if model is not None:
                pipe.zrem(self.keys.workers_by_model(model), worker_id)
            await pipe.execute()

    async def list_workers(self, model: str | None = None) -> list[WorkerRecord]:
        """Workers whose heartbeat is within their TTL, optionally for one model."""
        index = self.keys.workers if model is None else self.keys.workers_by_model(model)
        ids = sorted(await self._r.zrangebyscore(index, f"({time_text(self._clock.now())}", "+inf"))
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hmget(self.keys.worker(worker_id), ["record", "heartbeat_at"])
            rows = await pipe.execute()
        return [
            WorkerRecord(**json.loads(record), heartbeat_at=float(beat))
            for record, beat in rows
            if record is not None
        ]

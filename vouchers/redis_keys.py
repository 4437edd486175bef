"""Every Redis key the store uses, built in one place under a namespace prefix.

Layout (ns = namespace, s = startup id; `{s}` is a hash tag, so one startup's ledger keys share a slot):

    {ns}:startups                      hash  startup id -> JSON record
    {ns}:{s}:vouchers:{kind}           set   every voucher id of the startup and kind
    {ns}:{s}:live:{kind}               set   voucher ids that may still burn (voided/expired ones drop out)
    {ns}:{s}:voucher:{id}              hash  one voucher (amount, spent, held, times, priority, note)
    {ns}:voucher-owner                 hash  voucher id -> startup id
    {ns}:{s}:hold:{id}                 hash  one hold (fixed fields as JSON, allocations "vid=amt,...", status)
    {ns}:hold-owner                    hash  hold id -> startup id
    {ns}:{s}:holds:open                zset  open hold ids by expiry (reserve and the reaper release from it)
    {ns}:{s}:idem:hold                 hash  idempotency key -> hold id
    {ns}:{s}:idem:settle               hash  idempotency key -> journal seq
    {ns}:journal:seq                   string INCR counter for journal seq
    {ns}:journal:lines                 hash  seq -> "seq|amount|overage|breakdown|JSON of the fixed fields"
    {ns}:{s}:journal                   zset  seq by time, one startup (journal() of all merges these)
    {ns}:usage                         hash  "startup\\x1fkind\\x1flabel\\x1ffield" -> running total
    {ns}:keys                          hash  key id -> JSON record;  {ns}:keys:by-hash  hash -> key id
    {ns}:keys:revoked                  hash  key id -> revocation time (HSETNX: the first one stays)
    {ns}:{s}:keys                      set   key ids of a startup
    {ns}:prices / {ns}:limits          hash  model / startup id -> JSON
    {ns}:{s}:rate:{window}             hash  requests and tokens counted in one minute window
    {ns}:worker:{id}                   hash  record JSON, heartbeat time
    {ns}:workers                       zset  worker id -> deadline (last heartbeat + ttl)
    {ns}:workers:model:{model}         zset  worker id -> deadline, per model
    {ns}:{s}:answer:{key}              string "expires_at|answer" kept for an idempotency key's retries
    {ns}:{s}:answers:expiry            zset  idempotency key -> expiry of its kept answer
    {ns}:{s}:answers:size / :bytes     hash  idempotency key -> bytes kept; string: their running total
    {ns}:events                        pub/sub channel of ledger events (vouchers.events)
    {ns}:events:ack:{nonce}            list  one entry per listener that applied the event

Lua scripts receive the keys they touch, or, for per-voucher and per-hold hashes whose ids they only
learn while running, a prefix built here; they never invent a key name of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from vouchers.units import Kind


@dataclass(frozen=True)
class StartupKeys:
    """The keys of one startup's ledger, built once: the hot paths use them on every call."""

    live_model: str
    live_compute: str
    open_holds: str
    hold_idempotency: str
    settle_idempotency: str
    journal: str
    voucher_prefix: str
    hold_prefix: str

    def live(self, kind: Kind) -> str:
        return self.live_model if kind is Kind.MODEL else self.live_compute

    def hold(self, hold_id: str) -> str:
        return self.hold_prefix + hold_id


@dataclass(frozen=True)
class RedisKeys:
    """Key builder for one namespace."""

    ns: str = "shuqi"

    def _s(self, startup_id: str) -> str:
        # The hash tag: every key of one startup's ledger lands in the same cluster slot.
        return f"{self.ns}:{{{startup_id}}}"

    def answer(self, startup_id: str, key: str) -> str:
        return f"{self._s(startup_id)}:answer:{key}"

    def answers_index(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:answers:expiry"

    def answers_sizes(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:answers:size"

    def answers_bytes(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:answers:bytes"

    # global
    @property
    def startups(self) -> str:
        return f"{self.ns}:startups"

    @property
    def voucher_owner(self) -> str:
        return f"{self.ns}:voucher-owner"

    @property
    def hold_owner(self) -> str:
        return f"{self.ns}:hold-owner"

    @property
    def journal_seq(self) -> str:
        return f"{self.ns}:journal:seq"

    @property
    def journal_lines(self) -> str:
        return f"{self.ns}:journal:lines"

    @property
    def usage(self) -> str:
        return f"{self.ns}:usage"

    @property
    def keys(self) -> str:
        return f"{self.ns}:keys"

    @property
    def keys_by_hash(self) -> str:
        return f"{self.ns}:keys:by-hash"

    @property
    def keys_revoked(self) -> str:
        return f"{self.ns}:keys:revoked"

    @property
    def prices(self) -> str:
        return f"{self.ns}:prices"

    @property
    def limits(self) -> str:
        return f"{self.ns}:limits"

    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    def event_ack(self, nonce: str) -> str:
        return f"{self.ns}:events:ack:{nonce}"

    def worker(self, worker_id: str) -> str:
        return f"{self.ns}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.ns}:workers"

    def workers_by_model(self, model: str) -> str:
        return f"{self.ns}:workers:model:{model}"

    # per startup
    def vouchers(self, startup_id: str, kind: Kind) -> str:
        return f"{self._s(startup_id)}:vouchers:{kind.value}"

    def live_vouchers(self, startup_id: str, kind: Kind) -> str:
        return f"{self._s(startup_id)}:live:{kind.value}"

    def voucher_prefix(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:voucher:"

    def voucher(self, startup_id: str, voucher_id: str) -> str:
        return f"{self.voucher_prefix(startup_id)}{voucher_id}"

    def hold_prefix(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:hold:"

    def hold(self, startup_id: str, hold_id: str) -> str:
        return f"{self.hold_prefix(startup_id)}{hold_id}"

    def startup_open_holds(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:holds:open"

    def hold_idempotency(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:idem:hold"

    def settle_idempotency(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:idem:settle"

    def startup_journal(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:journal"

    def startup_keys(self, startup_id: str) -> str:
        return f"{self._s(startup_id)}:keys"

    def rate_window(self, startup_id: str, window: int) -> str:
        return f"{self._s(startup_id)}:rate:{window}"

    def startup(self, startup_id: str) -> StartupKeys:
        """Every per-startup key the scripts need, in one object."""
        return StartupKeys(
            live_model=self.live_vouchers(startup_id, Kind.MODEL),
            live_compute=self.live_vouchers(startup_id, Kind.COMPUTE),
            open_holds=self.startup_open_holds(startup_id),
            hold_idempotency=self.hold_idempotency(startup_id),
            settle_idempotency=self.settle_idempotency(startup_id),
            journal=self.startup_journal(startup_id),
            voucher_prefix=self.voucher_prefix(startup_id),
            hold_prefix=self.hold_prefix(startup_id),
        )


@dataclass(frozen=True)
class JobKeys:
    """The scheduler's keys (vouchers.redis_jobs), under the same namespace:

        {ns}:job:{id}                  hash   doc (JSON at creation), status, f:{field} (JSON of a later change)
        {ns}:job:{id}:archive / :logs  string the working-dir archive; the tail of the job's logs
        {ns}:jobs:all                  zset   job id -> queued_at, every job
        {ns}:jobs:status:{STATUS}      set    ids of QUEUED or RUNNING jobs (terminal ones are in none)
        {ns}:{s}:jobs                  zset   job id -> queued_at, one startup's
        {ns}:{s}:jobs:queued           set    its QUEUED job ids (the queue cap counts them)
        {ns}:{s}:jobs:idem             hash   idempotency key -> job id
        {ns}:scheduler:leader          string the leading instance, with a TTL
        {ns}:scheduler:usage           hash   startup id -> "value|as_of" (fair share)
        {ns}:scheduler:wake            list   pushed on a submit or cancel; a waiting scheduler pops it
        {ns}:scheduler:capacity        string JSON of the cluster's nodes as the scheduler last saw them
        {ns}:scheduler:estimates       hash   queued job id -> "position|start_at"
        {ns}:deployments               hash   deployment id -> JSON record
    """

    ns: str = "shuqi"

    def job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def archive(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:archive"

    def logs(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:logs"

    def all(self) -> str:
        return f"{self.ns}:jobs:all"

    def status(self, status: str) -> str:
        return f"{self.ns}:jobs:status:{status}"

    def startup_jobs(self, startup_id: str) -> str:
        return f"{self.ns}:{{{startup_id}}}:jobs"

    def startup_queued(self, startup_id: str) -> str:
        return f"{self.ns}:{{{startup_id}}}:jobs:queued"

    def idempotency(self, startup_id: str) -> str:
        return f"{self.ns}:{{{startup_id}}}:jobs:idem"

    def leader(self) -> str:
        return f"{self.ns}:scheduler:leader"

    def usage(self) -> str:
        return f"{self.ns}:scheduler:usage"

    def wake(self) -> str:
        return f"{self.ns}:scheduler:wake"

    def capacity(self) -> str:
        return f"{self.ns}:scheduler:capacity"

    def estimates(self) -> str:
        return f"{self.ns}:scheduler:estimates"

    def deployments(self) -> str:
        return f"{self.ns}:deployments"

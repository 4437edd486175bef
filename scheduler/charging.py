"""Charging jobs on the ledger: live partial settles while a job runs, one final settle when it ends.

The job's hold is the truth of what was debited (`Hold.settled`): every charge computes the job's
cumulative weighted GPU time from its start and debits only the difference. A partial settle's
idempotency key names the amount it starts from (`job:{id}:from:{settled}`), so two schedulers that read
the same hold (a failover overlap) debit that step once; the final settle has one key per job. So a
restart or a failover charges each job exactly once for its whole time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from scheduler.fairshare import decayed
from scheduler.metering import charged_ms
from vouchers.errors import Conflict, InsufficientQuota, NotFound
from vouchers.jobs import Job, JobStore, SchedulerState, Usage
from vouchers.ledger import Ledger
from vouchers.models import ChargeRef, Hold, HoldStatus
from vouchers.rules import in_force
from vouchers.units import Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Charged:
    gpu_ms: int  # raw GPU time charged so far
    charged_ms: int  # weighted: what the ledger was debited


@dataclass(frozen=True)
class Metered:
    """What is charged: a job, or a private deployment's replicas (no limit but its vouchers)."""

    key: str  # "job:{id}" or "deployment:{id}": the journal reference and the root of idempotency keys
    startup_id: str
    gpus: int
    started_at: float | None
    max_runtime_s: float
    weight_milli: int
    hold_id: str
    gpu_type: str | None


def of_job(job: Job) -> Metered:
    return Metered(key=f"job:{job.id}", startup_id=job.startup_id, gpus=job.gpus, started_at=job.started_at,
                   max_runtime_s=float(job.max_runtime_s), weight_milli=job.weight_milli, hold_id=job.hold_id,
                   gpu_type=job.started_gpu_type or job.gpu_type)


def elapsed_s(m: Metered, until: float) -> float:
    """Seconds of GPU time up to `until`, never past the limit."""
    if m.started_at is None:
        return 0.0
    return max(0.0, min(until - m.started_at, m.max_runtime_s))


class Charger:
    """Debits jobs' GPU time from their holds and keeps the startups' fair-share usage."""

    def __init__(self, ledger: Ledger, jobs: JobStore, state: SchedulerState, *, half_life_s: float) -> None:
        self._ledger = ledger
        self._jobs = jobs
        self._state = state
        self._half_life_s = half_life_s
        self._usage: dict[str, Usage] | None = None

    async def usage(self, now: float) -> dict[str, float]:
        """Every startup's decayed weighted GPU-seconds now."""
        if self._usage is None:
            self._usage = await self._state.usage()
        return {s: decayed(u.value, u.as_of, now, self._half_life_s) for s, u in self._usage.items()}

    async def meter(self, m: Metered, now: float) -> Charged:
        """Debit what ran since the last charge (a partial settle), at most what the hold still holds."""
        gpu, weighted = charged_ms(m.gpus, elapsed_s(m, now), m.weight_milli)
        hold = await self._hold(m)
        delta = min(weighted - hold.settled, hold.amount - hold.settled)
        if delta > 0 and hold.status is HoldStatus.OPEN:
            await self._ledger.settle(hold.id, delta, self._ref(m), final=False,
                                      idempotency_key=f"{m.key}:from:{hold.settled}")
            await self._add_usage(m.startup_id, delta, now)
        return Charged(gpu, max(weighted, hold.settled))

    async def finish(self, m: Metered, ended_at: float, now: float) -> Charged:
        """Debit the whole time up to `ended_at` and free the rest of the hold (once)."""
        gpu, weighted = charged_ms(m.gpus, elapsed_s(m, ended_at), m.weight_milli)
        hold = await self._hold(m)
        if hold.status is not HoldStatus.SETTLED:
            actual = max(0, weighted - hold.settled)
            await self._ledger.settle(hold.id, actual, self._ref(m), final=True, idempotency_key=f"{m.key}:final")
            if actual:
                await self._add_usage(m.startup_id, actual, now)
        return Charged(gpu, weighted)

    async def meter_job(self, job: Job, now: float) -> Charged:
        charged = await self.meter(of_job(job), now)
        await self._jobs.note_charge(job.id, gpu_ms=charged.gpu_ms, charged_ms=charged.charged_ms)
        return charged

    async def finish_job(self, job: Job, ended_at: float, now: float) -> Charged:
        charged = await self.finish(of_job(job), ended_at, now)
        await self._jobs.note_charge(job.id, gpu_ms=charged.gpu_ms, charged_ms=charged.charged_ms)
        return charged

    async def _hold(self, m: Metered) -> Hold:
        hold = await self._ledger.get_hold(m.hold_id)
        if hold is None:
            raise NotFound(f"hold {m.hold_id} of {m.key} is gone")
        return hold

    async def release(self, job: Job) -> None:
        """Free the hold of a job that never ran."""
        try:
            await self._ledger.release(job.hold_id)
        except NotFound:
            log.warning("hold %s of job %s was already gone", job.hold_id, job.id)

    async def keep_alive(self, job: Job, now: float, ttl_s: float) -> bool:
        """Renew the job's hold before its TTL passes; False if it had already lapsed."""
        hold = await self._ledger.get_hold(job.hold_id)
        if hold is None or hold.status is not HoldStatus.OPEN:
            return hold is not None and hold.status is HoldStatus.SETTLED
        if hold.expires_at - now > ttl_s / 2:
            return True
        try:
            await self._ledger.extend(hold.id, ttl_s=ttl_s)
        except Conflict:
            return False
        return True

    async def keep_covered(self, job: Job, need: int, now: float, ttl_s: float) -> bool:
        """Make sure vouchers in force still cover `need` of the job's hold; top it up from others if a
        voucher it sat on was voided or expired. False when nothing else covers it."""
        hold = await self._ledger.get_hold(job.hold_id)
        if hold is None or hold.status is not HoldStatus.OPEN:
            return hold is not None and hold.status is HoldStatus.SETTLED
        covered = await self._covered(hold, now)
        if covered >= need:
            return True
        try:
            await self._ledger.extend(hold.id, ttl_s=ttl_s, add_amount=need - covered)
        except (InsufficientQuota, Conflict):
            return False
        return True

    async def _covered(self, hold: Hold, now: float) -> int:
        vouchers = {v.id: v for v in await self._ledger.list_vouchers(hold.startup_id, Kind.COMPUTE)}
        return sum(amount for vid, amount in hold.allocations if vid in vouchers and in_force(vouchers[vid], now))

    def _ref(self, m: Metered) -> ChargeRef:
        return ChargeRef(reference=m.key, model=None, gpu_type=m.gpu_type)

    async def _add_usage(self, startup_id: str, weighted_ms: int, now: float) -> None:
        if self._usage is None:
            self._usage = await self._state.usage()
        old = self._usage.get(startup_id, Usage(0.0, now))
        new = Usage(decayed(old.value, old.as_of, now, self._half_life_s) + weighted_ms / 1000.0, now)
        self._usage[startup_id] = new
        await self._state.set_usage(startup_id, new)

"""The scheduler service: one loop that leads, meters, ends and starts jobs.

Every pass (at least every `tick_s`, and at once after a submit or a cancel):
1. take or renew the leader lease; a standby does nothing else;
2. read the cluster (nodes, shuqi's jobs in Ray) and publish its capacity for the gateway;
3. for each RUNNING job, `reconcile.judge` decides: keep (charge its time so far), submit again, or end
   (stop it in Ray if needed, compare-and-set its status, settle its whole time);
4. stop and settle jobs that were ended elsewhere (a cancel through the gateway);
5. reject queued jobs whose vouchers were voided or expired with nothing else to cover them;
6. plan (`policy.plan`: fair share, placement, backfill) and start what fits, each a compare-and-set
   QUEUED -> RUNNING before the submit to Ray; then publish each queued job's position and estimated start.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from scheduler import forecast, policy
from scheduler.backlog import Backlog
from scheduler.charging import Charger
from scheduler.config import SchedulerConfig
from scheduler.deployments import Deployer, WorkerLaunch
from scheduler.executor import Executor
from scheduler.metrics import SchedulerMetrics
from scheduler.reconcile import Action, Seen, Verdict, judge
from vouchers.catalog import Catalog
from vouchers.clock import Clock
from vouchers.deployments import DeploymentStore
from vouchers.job_rules import NodeInfo, hold_ms, weight_of
from vouchers.jobs import Estimate, Job, JobStatus, JobStore, SchedulerState
from vouchers.ledger import Ledger
from vouchers.models import HoldStatus

log = logging.getLogger(__name__)

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT)
_ALL = 10**9
COVER_LOST = "cover_lost: the compute vouchers behind this job were voided or expired, and no other covers it"
HOLD_LAPSED = "hold_lapsed: the job's hold expired while no scheduler was running"


@dataclass
class PassReport:
    """What one pass did (for logs, metrics and tests)."""

    started: list[str] = field(default_factory=list)
    ended: dict[str, JobStatus] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Scheduler:
    """Runs until cancelled; see the module docstring."""

    def __init__(self, *, jobs: JobStore, state: SchedulerState, ledger: Ledger, catalog: Catalog, cluster: Executor,
                 config: SchedulerConfig, clock: Clock, instance: str,
                 metrics: SchedulerMetrics | None = None, deployments: DeploymentStore | None = None,
                 launch: WorkerLaunch | None = None) -> None:
        self._jobs = jobs
        self._state = state
        self._ledger = ledger
        self._catalog = catalog
        self._cluster = cluster
        self._config = config
        self._clock = clock
        self.instance = instance
        self.metrics = metrics or SchedulerMetrics(instance)
        self.charger = Charger(ledger, jobs, state, half_life_s=config.half_life_s)
        self.deployer = None if deployments is None else Deployer(
            store=deployments, ledger=ledger, cluster=cluster, charger=self.charger, weights=config.gpu_weights,
            launch=launch or WorkerLaunch(), clock=clock)
        self.leading = False
        self.leaderships = 0  # times this instance took the lead
        self.last_pass: PassReport | None = None
        self._was_running: set[str] = set()
        self._cover_checked_at = float("-inf")
        self._logs_copied: dict[str, float] = {}
        self._head: str | None = None
        self._backlog = Backlog()  # the QUEUED jobs, kept in fair-share groups between passes
        self._estimated_at = float("-inf")  # the job backfill protects, kept across passes until it starts
        self.passes = 0

    async def run(self) -> None:
        """Lead or stand by, pass after pass, until cancelled."""
        while True:
            await self.step()
            if self.leading:
                await self._state.wait_changed(self._config.tick_s)
            else:
                await asyncio.sleep(self._config.tick_s)

    async def step(self) -> PassReport | None:
        """Renew the lease and, when leading, make one pass; errors are logged, never fatal."""
        try:
            leading = await self._state.lead(self.instance, ttl_s=self._config.lease_ttl_s)
        except Exception:
            log.exception("scheduler %s could not reach the store for its lease", self.instance)
            leading = False
        if leading and not self.leading:
            log.info("scheduler %s leads", self.instance)
            self.leaderships += 1
            self._was_running = set()  # what a previous leader was running is found again in the store
            self._backlog = Backlog()
            try:
                await self._recover()
            except Exception:
                log.exception("recovery sweep failed; the next leadership change tries again")
        self.leading = leading
        self.metrics.leader.set(1 if leading else 0)
        if not leading:
            return None
        try:
            report = await self.pass_once()
        except Exception:
            log.exception("scheduler pass failed")
            return None
        self.last_pass = report
        self.metrics.pass_seconds.observe(report.seconds)
        return report

    async def _recover(self) -> None:
        """Settle jobs that ended while no scheduler led (a cancel, then the Ray job ended unwatched)."""
        ended = await self._jobs.list_jobs(statuses=_ENDED, limit=self._config.recover_limit)
        now = self._clock.now()
        for job in ended:
            if job.started_at is None:
                continue
            hold = await self._ledger.get_hold(job.hold_id)
            if hold is not None and hold.status is HoldStatus.OPEN:
                await self.charger.finish_job(job, job.ended_at if job.ended_at is not None else now, now)

    async def pass_once(self) -> PassReport:
        began = time.perf_counter()
        report = PassReport()
        now = self._clock.now()
        nodes = await self._cluster.nodes()
        await self._state.set_capacity(nodes)
        seen = await self._cluster.jobs()
        active = await self._jobs.list_jobs(statuses=_ACTIVE, limit=_ALL)
        running = [j for j in active if j.status is JobStatus.RUNNING]
        dead = {n.node_id for n in nodes if not n.alive}
        still: list[Job] = []
        for job in running:
            ended = await self._tend(job, seen.get(job.id), dead, now)
            if ended is None:
                still.append(job)
            else:
                report.ended[job.id] = ended
        await self._ended_elsewhere({j.id for j in running}, seen, now)
        self._was_running = {j.id for j in still}
        queued = [j for j in active if j.status is JobStatus.QUEUED]
        queued = await self._check_cover(queued, still, now, report)
        await self._start_and_estimate(queued, still, nodes, seen, now, report)
        self.passes += 1
        report.seconds = time.perf_counter() - began
        return report

    async def _tend(self, job: Job, seen: Seen | None, dead: set[str], now: float) -> JobStatus | None:
        """Meter a running job, or end it; the status it ended in, if it did."""
        verdict = judge(job, seen, dead, now, submit_grace_s=self._config.submit_grace_s)
        if verdict.action is Action.KEEP:
            await self.charger.keep_alive(job, now, self._config.hold_ttl_s)
            await self.charger.meter_job(job, now)
            await self._copy_logs(job)
            return None
        if verdict.action is Action.SUBMIT:
            await self._submit(job, job.node_id or "", job.started_gpu_type or "")
            return None
        return await self._end(job, verdict, now)

    async def _end(self, job: Job, verdict: Verdict, now: float) -> JobStatus | None:
        if verdict.stop:
            await self._cluster.stop(job.id)
        if verdict.status is None or verdict.ended_at is None:
            raise ValueError(f"an END verdict without a status or an end: {verdict}")
        moved = await self._jobs.transition(job.id, JobStatus.RUNNING, verdict.status,
                                            {"ended_at": verdict.ended_at, "reason": verdict.reason})
        if moved is None:
            return None  # ended elsewhere meanwhile (a cancel): `_ended_elsewhere` settles it
        await self.charger.finish_job(moved, verdict.ended_at, now)
        await self._copy_logs(moved, final=True)
        log.info("job ended", extra={"job_id": job.id, "startup": job.startup_id, "status": verdict.status.value})
        return verdict.status

    async def _ended_elsewhere(self, running_ids: set[str], seen: dict[str, Seen], now: float) -> None:
        """Jobs that left RUNNING without this scheduler (a cancel): stop them in Ray and settle their time."""
        suspects = set(self._was_running) - running_ids
        suspects |= {jid for jid, s in seen.items()
                     if jid.startswith("job_") and s.status in ("PENDING", "RUNNING") and jid not in running_ids}
        for job_id in suspects:
            job = await self._jobs.get(job_id)
            if job is None or not job.status.is_terminal():
                continue
            state = seen.get(job_id)
            if state is not None and state.status in ("PENDING", "RUNNING"):
                await self._cluster.stop(job_id)
            if job.started_at is not None:
                await self.charger.finish_job(job, job.ended_at if job.ended_at is not None else now, now)
                await self._copy_logs(job, final=True)

    async def _check_cover(self, queued: list[Job], running: list[Job], now: float,
                           report: PassReport) -> list[Job]:
        """Reject queued jobs (and stop running ones) whose vouchers no longer cover them."""
        if now - self._cover_checked_at < self._config.cover_check_s:
            return queued
        self._cover_checked_at = now
        kept: list[Job] = []
        ttl = self._config.hold_ttl_s
        for job in queued:
            need = hold_ms(job.gpus, job.max_runtime_s, job.weight_milli)
            alive = await self.charger.keep_alive(job, now, ttl)
            if alive and await self.charger.keep_covered(job, need, now, ttl):
                kept.append(job)
                continue
            if await self._jobs.transition(job.id, JobStatus.QUEUED, JobStatus.REJECTED,
                                           {"ended_at": now, "reason": COVER_LOST if alive else HOLD_LAPSED}):
                await self.charger.release(job)
                report.rejected.append(job.id)
        for job in running:
            need = hold_ms(job.gpus, job.max_runtime_s, job.weight_milli) - job.charged_ms
            if not await self.charger.keep_covered(job, max(0, need), now, ttl):
                status = await self._end(job, Verdict(Action.END, JobStatus.FAILED, COVER_LOST, ended_at=now,
                                                      stop=True), now)
                if status is not None:
                    report.ended[job.id] = status
        return kept

    async def _start_and_estimate(self, queued: list[Job], running: list[Job], nodes: list[NodeInfo],
                                  seen: dict[str, Seen], now: float, report: PassReport) -> None:
        caps = await self._caps({j.startup_id for j in queued})
        self._sync_backlog(queued)
        reservations = [_reservation(j, seen.get(j.id)) for j in running]
        cluster = [policy.Node(n.node_id, n.gpu_type, n.gpus, n.alive) for n in nodes]
        if self.deployer is not None:
            reservations += await self.deployer.tend(seen, cluster, reservations, now)
        usage = await self.charger.usage(now)
        weights = {t: w / 1000 for t, w in self._config.gpu_weights.items()}
        plan = policy.plan(self._backlog, reservations, cluster, usage, now, max_gpus=caps, weights=weights,
                           keep_head=self._head)
        # Only a head some node can hold keeps its place: one that can never start protects nothing.
        self._head = plan.head if plan.head_start_at is not None else None
        by_id = {j.id: j for j in queued}
        gpu_type = {n.node_id: n.gpu_type for n in nodes}
        for start in plan.starts:
            job = by_id[start.job_id]
            self._backlog.discard(job.id)
            started = await self._start(job, start.node_id, gpu_type[start.node_id], now)
            if started is not None:
                report.started.append(job.id)
                reservations.append(_reservation(started, None))
        if report.started or now - self._estimated_at >= self._config.estimate_s:
            self._estimated_at = now
            estimates = forecast.estimate(self._backlog, reservations, cluster, usage, now, max_gpus=caps,
                                          weights=weights, limit=self._config.estimate_limit,
                                          half_life_s=self._config.half_life_s, keep_head=self._head)
            await self._state.set_estimates({jid: Estimate(e.position, e.start_at) for jid, e in estimates.items()})

    def _sync_backlog(self, queued: list[Job]) -> None:
        """Keep the in-memory queue equal to the store's QUEUED jobs (new ones added, gone ones dropped)."""
        ids = {j.id for j in queued}
        for job_id in [p.id for p in self._backlog if p.id not in ids]:
            self._backlog.discard(job_id)
        for job in queued:
            if job.id not in self._backlog:
                self._backlog.add(_pending(job))

    async def _caps(self, startups: set[str]) -> dict[str, int | None]:
        caps: dict[str, int | None] = {}
        for startup in startups:
            caps[startup] = (await self._catalog.get_limits(startup)).max_gpus
        return caps

    async def _start(self, job: Job, node_id: str, gpu_type: str, now: float) -> Job | None:
        weight = weight_of(gpu_type, self._config.gpu_weights)
        started = await self._jobs.transition(job.id, JobStatus.QUEUED, JobStatus.RUNNING, {
            "started_at": now, "node_id": node_id, "started_gpu_type": gpu_type,
            "weight_milli": min(weight, job.weight_milli)})
        if started is None:
            return None  # cancelled meanwhile
        if not await self._submit(started, node_id, gpu_type):
            return None
        self.metrics.queue_wait.observe(max(0.0, now - job.queued_at))
        log.info("job started", extra={"job_id": job.id, "startup": job.startup_id, "node": node_id})
        return started

    async def _submit(self, job: Job, node_id: str, gpu_type: str) -> bool:
        """Hand the job to the cluster; a refusal ends it FAILED, charged nothing."""
        workdir = await self._unpack(job)
        try:
            await self._cluster.submit(submission_id=job.id, entrypoint=job.entrypoint, gpus=job.gpus,
                                       gpu_type=gpu_type, node_id=node_id, env=job.env, working_dir=workdir,
                                       tags={"startup": job.startup_id, "name": job.name})
        except Exception as exc:
            log.warning("job %s could not be submitted: %s", job.id, exc)
            started = job.started_at if job.started_at is not None else self._clock.now()
            await self._end(job, Verdict(Action.END, JobStatus.FAILED, f"could not start: {exc}"[:500],
                                         ended_at=started), self._clock.now())
            return False
        finally:
            if workdir is not None:
                shutil.rmtree(workdir.parent, ignore_errors=True)
        return True

    async def _unpack(self, job: Job) -> Path | None:
        if not job.has_archive:
            return None
        data = await self._jobs.archive(job.id)
        if data is None:
            return None
        root = Path(tempfile.mkdtemp(prefix=f"shuqi-{job.id}-"))
        target = root / "work"
        with zipfile.ZipFile(BytesIO(data)) as archive:
            archive.extractall(target)  # archives are built by shuqi's client; names are checked at submit
        return target

    async def _copy_logs(self, job: Job, *, final: bool = False) -> None:
        now = self._clock.now()
        if not final and now - self._logs_copied.get(job.id, float("-inf")) < self._config.log_copy_s:
            return
        self._logs_copied[job.id] = now
        if final:
            self._logs_copied.pop(job.id, None)
        try:
            text = await self._cluster.logs(job.id)
        except Exception as exc:
            log.debug("logs of job %s not read: %s", job.id, exc)
            return
        limit = self._config.log_tail_bytes
        if len(text) > limit:
            text = text[-limit:]
        await self._jobs.set_logs(job.id, text)


def _pending(job: Job) -> policy.Pending:
    return policy.Pending(id=job.id, startup=job.startup_id, gpus=job.gpus, gpu_type=job.gpu_type,
                          max_runtime_s=float(job.max_runtime_s), submitted_at=job.queued_at, priority=job.priority)


def _reservation(job: Job, seen: Seen | None) -> policy.Reservation:
    started = job.started_at if job.started_at is not None else 0.0
    return policy.Reservation(id=job.id, startup=job.startup_id, node_id=(seen.node_id if seen else None) or
                              job.node_id or "", gpus=job.gpus, ends_at=started + job.max_runtime_s)

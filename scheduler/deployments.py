"""Model deployments placed by the scheduler: each replica a Ray job running `shuqi worker` on its GPUs.

A replica is an ordinary worker service (it starts the engine, registers in the store with a heartbeat,
and the gateway routes to it), started through Ray's Jobs API with the deployment's GPUs reserved for
it, pinned to the node the scheduler chose. Its model spec travels as a one-model config file in the
job's working directory. Replicas hold their GPUs until the deployment is deleted: the job planner sees
them as reservations without an end.

A shared deployment (no owner) is paid per token, like any shared model. A private one burns its owner's
compute vouchers per GPU-second: it holds a rolling window of GPU time, charges what ran every pass, tops
the window up while vouchers last, and stops once the last of it is used.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.backfill import Capacity
from scheduler.charging import Charger, Metered
from scheduler.executor import Executor
from scheduler.reconcile import Seen
from scheduler.records import Node, Pending, Reservation
from vouchers.clock import Clock
from vouchers.deployments import Deployment, DeploymentState, DeploymentStore
from vouchers.errors import Conflict, InsufficientQuota
from vouchers.job_rules import hold_ms, weight_of
from vouchers.ledger import Ledger
from vouchers.models import HoldStatus
from vouchers.units import Kind

log = logging.getLogger(__name__)

EXHAUSTED = "compute vouchers exhausted"
_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class WorkerLaunch:
    """How a replica's worker is started on a node: the interpreter that has shuqi, and its environment."""

    python: str = "python"
    env: Mapping[str, str] = field(default_factory=dict)  # SHUQI_STORE, SHUQI_DATA_DIR, ...
    hold_window_s: int = 600  # GPU time a private deployment holds ahead


def replica_ids(d: Deployment) -> list[str]:
    return [f"{d.id}-r{i}" for i in range(d.replicas)]


def spec_toml(d: Deployment) -> str:
    """The deployment as a one-model worker config."""
    lines = ["[[models]]", f'name = "{d.name}"', f'engine = "{d.engine}"', f'model = "{d.model}"',
             f"gpus = {d.gpus}", f'owner = "{d.owner or "shared"}"']
    if d.max_model_len is not None:
        lines.append(f"max_model_len = {d.max_model_len}")
    if d.capacity is not None:
        lines.append(f"capacity = {d.capacity}")
    return "\n".join(lines) + "\n"


def reservations(deployments: list[Deployment]) -> list[Reservation]:
    """GPUs running deployments hold, with no end."""
    return [Reservation(id=rid, startup=d.owner, node_id=node, gpus=d.gpus, ends_at=None)
            for d in deployments if d.state is DeploymentState.RUNNING
            for rid, node in zip(replica_ids(d), d.nodes, strict=False)]


def place(d: Deployment, nodes: list[Node], running: list[Reservation]) -> tuple[str, ...] | None:
    """A node for every replica (best fit), or None when they do not all fit now."""
    capacity = Capacity(nodes, running)
    chosen: list[str] = []
    for rid in replica_ids(d):
        node = capacity.best_fit(Pending(id=rid, startup=d.owner or "", gpus=d.gpus, gpu_type=d.gpu_type,
                                         max_runtime_s=float("inf"), submitted_at=d.created_at))
        if node is None:
            return None
        capacity.take(node, d.gpus, None)
        chosen.append(node)
    return tuple(chosen)


class Deployer:
    """Starts, meters and stops deployments, once per scheduler pass."""

    def __init__(self, *, store: DeploymentStore, ledger: Ledger, cluster: Executor, charger: Charger,
                 weights: Mapping[str, int], launch: WorkerLaunch, clock: Clock) -> None:
        self._store = store
        self._ledger = ledger
        self._cluster = cluster
        self._charger = charger
        self._weights = weights
        self._launch = launch
        self._clock = clock

    async def tend(self, seen: Mapping[str, Seen], nodes: list[Node], jobs: list[Reservation],
                   now: float) -> list[Reservation]:
        """One pass over the deployments; the reservations of those running afterwards."""
        out: list[Deployment] = []
        for d in await self._store.list_deployments(include_final=False):
            tended = await self._tend_one(d, seen, nodes, [*jobs, *reservations(out)], now)
            if tended is not None and tended.state is DeploymentState.RUNNING:
                out.append(tended)
        return reservations(out)

    async def _tend_one(self, d: Deployment, seen: Mapping[str, Seen], nodes: list[Node],
                        running: list[Reservation], now: float) -> Deployment | None:
        if d.stop_requested:
            return await self._stop(d, DeploymentState.STOPPED, "deleted", now)
        if d.state is DeploymentState.PENDING:
            return await self._start(d, nodes, running, now)
        ended = [rid for rid in replica_ids(d) if rid in seen and seen[rid].status in _ENDED]
        if ended:
            why = seen[ended[0]].message or seen[ended[0]].status
            return await self._stop(d, DeploymentState.FAILED, f"replica {ended[0]} ended: {why}"[:500], now)
        if d.owner is not None and not await self._meter(d, now):
            return await self._stop(d, DeploymentState.STOPPED, EXHAUSTED, now)
        return d

    async def _start(self, d: Deployment, nodes: list[Node], running: list[Reservation],
                     now: float) -> Deployment | None:
        placed = place(d, nodes, running)
        if placed is None:
            return d
        gpu_type = {n.node_id: n.gpu_type for n in nodes}[placed[0]]
        weight = weight_of(gpu_type, self._weights)
        hold_id = None
        if d.owner is not None:
            amount = hold_ms(d.gpus * d.replicas, self._launch.hold_window_s, weight)
            try:
                hold = await self._ledger.reserve(d.owner, Kind.COMPUTE, amount, ttl_s=3600.0,
                                                  idempotency_key=f"deployment:{d.id}")
            except InsufficientQuota:
                return await self._store.update_deployment(d.id, DeploymentState.PENDING, {
                    "state": DeploymentState.FAILED, "reason": EXHAUSTED, "stopped_at": now})
            hold_id = hold.id
        started = await self._store.update_deployment(d.id, DeploymentState.PENDING, {
            "state": DeploymentState.RUNNING, "nodes": placed, "started_at": now, "hold_id": hold_id,
            "weight_milli": weight})
        if started is None:
            return None
        await self._submit_replicas(started, gpu_type)
        return started

    async def _submit_replicas(self, d: Deployment, gpu_type: str) -> None:
        root = Path(tempfile.mkdtemp(prefix=f"shuqi-{d.id}-"))
        try:
            (root / "models.toml").write_text(spec_toml(d))
            entrypoint = (f"env -u RAY_ADDRESS {shlex.quote(self._launch.python)} -m shuqi.cli worker "
                          f"--model {shlex.quote(d.name)}")
            env = {**self._launch.env, "SHUQI_MODELS": "models.toml"}
            for rid, node in zip(replica_ids(d), d.nodes, strict=True):
                await self._cluster.submit(submission_id=rid, entrypoint=entrypoint, gpus=d.gpus, gpu_type=gpu_type,
                                           node_id=node, env=env, working_dir=root,
                                           tags={"deployment": d.id, "model": d.name})
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _metered(self, d: Deployment) -> Metered:
        return Metered(key=f"deployment:{d.id}", startup_id=d.owner or "", gpus=d.gpus * d.replicas,
                       started_at=d.started_at, max_runtime_s=float("inf"), weight_milli=d.weight_milli,
                       hold_id=d.hold_id or "", gpu_type=None)

    async def _meter(self, d: Deployment, now: float) -> bool:
        """Charge a private deployment's GPU time; False once its vouchers are used up."""
        m = self._metered(d)
        charged = await self._charger.meter(m, now)
        hold = await self._ledger.get_hold(m.hold_id)
        if hold is None or hold.status is not HoldStatus.OPEN:
            return False
        await self._store.update_deployment(d.id, DeploymentState.RUNNING, {
            "charged_gpu_ms": charged.gpu_ms, "charged_ms": charged.charged_ms})
        window = hold_ms(m.gpus, self._launch.hold_window_s, m.weight_milli)
        if hold.amount - charged.charged_ms > window // 2:
            return True
        try:
            await self._ledger.extend(hold.id, ttl_s=3600.0, add_amount=window)
        except (InsufficientQuota, Conflict):
            return charged.charged_ms < hold.amount  # run on what is left, then stop
        return True

    async def _stop(self, d: Deployment, state: DeploymentState, reason: str, now: float) -> Deployment | None:
        for rid in replica_ids(d):
            await self._cluster.stop(rid)
        if d.hold_id is not None and d.started_at is not None:
            charged = await self._charger.finish(self._metered(d), now, now)
            d = d.with_changes({"charged_gpu_ms": charged.gpu_ms, "charged_ms": charged.charged_ms})
        stopped = await self._store.update_deployment(d.id, d.state, {
            "state": state, "reason": reason, "stopped_at": now,
            "charged_gpu_ms": d.charged_gpu_ms, "charged_ms": d.charged_ms})
        log.info("deployment stopped", extra={"deployment": d.id, "state": state.value, "reason": reason})
        return stopped

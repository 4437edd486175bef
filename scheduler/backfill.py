"""Placement on nodes and the EASY backfill reservation of the head job.

A job runs on one node, of its GPU type when it names one, alive, with enough GPUs free (the node's
total minus the reservations on it). Among the nodes that fit, the pass takes the best fit, the one
left with the fewest free GPUs, so large holes stay whole for large jobs.

Backfill follows Slurm's EASY scheme: the first job in order that cannot start (the head) gets a
reservation, the earliest time some eligible node will have its GPUs free if every running job ends at
its limit (the shadow time) on that node. A later job may start now only where it cannot push that
back: on another node, or on the head's node if it ends by the shadow time, or if it fits in the GPUs
the head leaves over on that node at the shadow time (`extra`). Only one job is protected; a job
further back may be passed over again and again (Slurm's conservative backfill protects every job,
at a cost that grows with the queue; the service re-runs the pass on every event, and a head keeps
its place across passes until it starts, so every job in turn becomes the head and gets its
reservation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.records import Node, Pending, Reservation


@dataclass
class Shadow:
    """The head job's reservation: `node_id` will have its GPUs at `start_at`, with `extra` to spare."""

    job: Pending
    node_id: str
    start_at: float
    extra: int

    def allows(self, node_id: str, gpus: int, ends_at: float) -> bool:
        """Whether a job of `gpus` ending at `ends_at` may start on `node_id` now without delaying the head."""
        return node_id != self.node_id or ends_at <= self.start_at or gpus <= self.extra

    def take(self, node_id: str, gpus: int, ends_at: float) -> None:
        """Record a backfilled start: past the shadow time it uses the head node's spare GPUs."""
        if node_id == self.node_id and ends_at > self.start_at:
            self.extra -= gpus


class Capacity:
    """Free GPUs per alive node during one pass, and when reserved GPUs come back."""

    def __init__(self, nodes: Sequence[Node], running: Sequence[Reservation]) -> None:
        self.free: dict[str, int] = {}
        self._types: dict[str, str] = {}
        self._total: dict[str, int] = {}
        for node in nodes:
            if node.alive:
                self.free[node.node_id] = node.gpus
                self._types[node.node_id] = node.gpu_type
                self._total[node.node_id] = node.gpus
        self._releases: dict[str, list[tuple[float, int]]] = {node_id: [] for node_id in self.free}
        for r in running:
            if r.node_id in self.free:
                self.free[r.node_id] -= r.gpus
                if r.ends_at is not None:
                    self._releases[r.node_id].append((r.ends_at, r.gpus))
        self.total_free = sum(max(f, 0) for f in self.free.values())

    def gpu_type(self, node_id: str) -> str:
        """The GPU type of an alive node."""
        return self._types[node_id]

    def best_fit(self, job: Pending, shadow: Shadow | None = None, ends_at: float = 0.0) -> str | None:
        """The eligible node left with the fewest free GPUs after `job`, among those `shadow` allows."""
        best: str | None = None
        best_left = 0
        for node_id, free in self.free.items():
            left = free - job.gpus
            if left < 0 or (best is not None and left >= best_left):
                continue
            if job.gpu_type is not None and self._types[node_id] != job.gpu_type:
                continue
            if shadow is not None and not shadow.allows(node_id, job.gpus, ends_at):
                continue
            best, best_left = node_id, left
        return best

    def take(self, node_id: str, gpus: int, ends_at: float | None) -> None:
        """Reserve `gpus` on `node_id` until `ends_at` (None or infinity: no end)."""
        self.free[node_id] -= gpus
        self.total_free -= gpus
        if ends_at is not None and ends_at != math.inf:
            self._releases[node_id].append((ends_at, gpus))

    def shadow(self, job: Pending, now: float) -> Shadow | None:
        """The earliest reservation some eligible node can give `job` (None: none ever can)."""
        best: Shadow | None = None
        for node_id, free in self.free.items():
            if self._total[node_id] < job.gpus:
                continue
            if job.gpu_type is not None and self._types[node_id] != job.gpu_type:
                continue
            found = _node_shadow(free, sorted(self._releases[node_id]), job.gpus, now)
            if found is None:
                continue
            start_at, extra = found
            if best is None or (start_at, extra, node_id) < (best.start_at, best.extra, best.node_id):
                best = Shadow(job, node_id, start_at, extra)
        return best


def _node_shadow(free: int, releases: list[tuple[float, int]], gpus: int, now: float) -> tuple[float, int] | None:
    """When `gpus` will be free on a node with `free` now and these (sorted) releases, and what is left over."""
    i = 0
    while free < gpus:
        if i == len(releases):
            return None
        free += releases[i][1]
        i += 1
    start_at = max(now, releases[i - 1][0]) if i else now
    # Releases at the same instant free GPUs the head does not need either.
    while i < len(releases) and releases[i][0] <= start_at:
        free += releases[i][1]
        i += 1
    return start_at, free - gpus

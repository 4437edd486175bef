"""Fair share between startups: recent weighted GPU usage, decayed with a half-life, decides whose turn it is.

A startup's usage is weighted GPU-seconds (GPU-seconds times the GPU type's weight) known as of some
time; it halves every `half_life_s` (Slurm's PriorityDecayHalfLife, 7 days by default there too), so
last month's burst stops counting against a startup while last hour's still does.

The order of one pass (`Turns`) is not the stored usage alone. A startup's **share** is

    share = decayed usage now
          + sum over its running and just-started jobs of weight * gpus * min(remaining limit, lookahead_s)

The second term is the usage the startup has already committed to: GPUs it holds will be charged as
they run, so a startup holding 8 GPUs is not "behind" one holding none just because the ledger has not
seen those seconds yet. Because a running job's remaining time turns into usage at the same rate as it
runs out, the share barely moves while jobs run and only jumps when a job starts (by its whole
commitment) or ends early (the unused rest is given back). Counting a job started in this pass at once
is what makes two startups with equal demand alternate when many GPUs free together, instead of the
one that was behind by a hair taking them all. `lookahead_s` caps a commitment: a deployment has no end,
and a 3-day job should not push its startup back for three days of turns before it has used an hour.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping

from scheduler.records import Pending

DEFAULT_HALF_LIFE_S = 7 * 24 * 3600.0
DEFAULT_LOOKAHEAD_S = 3600.0


def decayed(value: float, as_of: float, now: float, half_life_s: float) -> float:
    """`value` (known at `as_of`) as it weighs at `now`."""
    if now <= as_of or value == 0.0:
        return value
    return value * math.exp(-(now - as_of) * math.log(2) / half_life_s)


def add(value: float, as_of: float, amount: float, now: float, half_life_s: float) -> float:
    """`value` (known at `as_of`) decayed to `now`, plus `amount` charged at `now`."""
    return decayed(value, as_of, now, half_life_s) + amount


def accrued(rate: float, start: float, end: float, half_life_s: float) -> float:
    """Usage at `end` of using `rate` weighted GPUs without pause over [start, end], each second decayed since."""
    span = end - start
    if span <= 0.0:
        return 0.0
    # -expm1 keeps the precision a plain 1 - 2**-x loses for spans much shorter than the half-life.
    return rate * half_life_s / math.log(2) * -math.expm1(-span * math.log(2) / half_life_s)


def commitment(gpus: int, weight: float, remaining_s: float | None, lookahead_s: float) -> float:
    """Usage a reservation adds to its startup's share: weighted GPUs times its remaining limit, capped."""
    horizon = lookahead_s if remaining_s is None else min(max(remaining_s, 0.0), lookahead_s)
    return gpus * weight * horizon


def job_order(job: Pending) -> tuple[int, float, str]:
    """Within a startup: higher priority first, then older, then by id."""
    return (-job.priority, job.submitted_at, job.id)


class Turns:
    """Queued jobs in fair-share order, walked once by a pass that charges each start to its startup.

    Each startup keeps its own heap of jobs (priority, submit time, id) and the startups sit in a heap
    keyed by share, so a pass costs O(n) to build and O(log n) per job it looks at, however long the
    queue. `first` names a job that goes before every other (the head a previous pass protected).
    """

    def __init__(
        self, pending: Iterable[Pending], shares: Mapping[str, float], *, first: str | None = None
    ) -> None:
        queues: dict[str, list[tuple[int, float, str, Pending]]] = {}
        self.first: Pending | None = None
        for job in pending:
            if job.id == first:
                self.first = job
                continue
            queue = queues.get(job.startup)
            if queue is None:
                queue = queues[job.startup] = []
            queue.append((-job.priority, job.submitted_at, job.id, job))
        self._queues = queues
        self.share = {startup: shares.get(startup, 0.0) for startup in queues}
        if self.first is not None:
            self.share.setdefault(self.first.startup, shares.get(self.first.startup, 0.0))
        self._turns: list[tuple[float, float, str]] = []
        for startup, queue in queues.items():
            heapq.heapify(queue)
            self._turns.append((self.share[startup], queue[0][1], startup))
        heapq.heapify(self._turns)
        self._waiting = set(queues)

    def take(self) -> Pending | None:
        """The next job in order (None when the queue is empty); hand its startup back with `back`."""
        if self.first is not None:
            job, self.first = self.first, None
            self._queues.setdefault(job.startup, [])
            return job
        while self._turns:
            share, _, startup = heapq.heappop(self._turns)
            if share != self.share[startup]:
                # Stale: the startup was charged (its `first` job started) while it waited here.
                self._push(startup)
                continue
            self._waiting.discard(startup)
            return heapq.heappop(self._queues[startup])[3]
        return None

    def back(self, startup: str, charge: float = 0.0) -> None:
        """Give `startup` its next turn, its share raised by `charge` (a job it just started)."""
        self.share[startup] += charge
        if startup not in self._waiting:
            self._push(startup)

    def _push(self, startup: str) -> None:
        queue = self._queues[startup]
        if queue:
            heapq.heappush(self._turns, (self.share[startup], queue[0][1], startup))
            self._waiting.add(startup)

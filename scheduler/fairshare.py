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

from scheduler.backlog import Backlog
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


class Turns:
    """Queued jobs in fair-share order, walked once by a pass that charges each start to its startup.

    The startups sit in a heap keyed by share; each startup's jobs are read in order from the front of
    its list in the `Backlog`, so a pass costs O(startups) to set up and O(log startups) per job it
    looks at. `first` names a job that goes before every other (the head a previous pass protected).
    """

    def __init__(self, pending: Iterable[Pending] | Backlog, shares: Mapping[str, float], *,
                 first: str | None = None) -> None:
        backlog = pending if isinstance(pending, Backlog) else Backlog(pending)
        self._groups = backlog.groups()
        self._cursor = dict.fromkeys(self._groups, 0)
        self._skip = first
        self.first = backlog.get(first) if first is not None else None
        self.share = {startup: shares.get(startup, 0.0) for startup in self._groups}
        self._turns: list[tuple[float, float, str]] = []
        self._waiting: set[str] = set()
        for startup in self._groups:
            self._push(startup)

    def take(self) -> Pending | None:
        """The next job in order (None when the queue is empty); hand its startup back with `back`."""
        if self.first is not None:
            job, self.first = self.first, None
            return job
        while self._turns:
            share, _, startup = heapq.heappop(self._turns)
            if share != self.share[startup]:
                # Stale: the startup was charged (its `first` job started) while it waited here.
                self._push(startup)
                continue
            self._waiting.discard(startup)
            found = self._peek(startup)
            if found is not None:
                self._cursor[startup] += 1
                return found
        return None

    def back(self, startup: str, charge: float = 0.0) -> None:
        """Give `startup` its next turn, its share raised by `charge` (a job it just started)."""
        self.share[startup] += charge
        if startup not in self._waiting:
            self._push(startup)

    def _peek(self, startup: str) -> Pending | None:
        group, i = self._groups[startup], self._cursor[startup]
        if i < len(group) and group[i].id == self._skip:
            i = self._cursor[startup] = i + 1
        return group[i] if i < len(group) else None

    def _push(self, startup: str) -> None:
        job = self._peek(startup)
        if job is not None:
            heapq.heappush(self._turns, (self.share[startup], job.submitted_at, startup))
            self._waiting.add(startup)

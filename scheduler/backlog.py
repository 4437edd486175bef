"""The queue of QUEUED jobs, grouped by startup and kept in order, so that a pass need not sort it.

The service keeps one `Backlog` in memory beside the store (add on submit, discard on start, cancel or
reject; rebuilt from the store when a scheduler becomes the leader) and hands it to every pass. A pass
then costs O(startups + jobs it looks at), however long the queue: it reads each startup's jobs from
the front of its list. A plain sequence works too and is grouped and sorted first, O(n log n) and
slower per job at 100,000 jobs than at 10,000 (measured in `benchmarks/scheduler.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence

from scheduler.records import Pending


def job_order(job: Pending) -> tuple[int, float, str]:
    """Within a startup: higher priority first, then older, then by id."""
    return (-job.priority, job.submitted_at, job.id)


class Backlog:
    """Queued jobs by startup, each startup's in `job_order`."""

    def __init__(self, jobs: Iterable[Pending] = ()) -> None:
        self._jobs: dict[str, Pending] = {}
        self._groups: dict[str, list[Pending]] = {}
        for job in jobs:
            self._jobs[job.id] = job
            group = self._groups.get(job.startup)
            if group is None:
                group = self._groups[job.startup] = []
            group.append(job)
        for group in self._groups.values():
            group.sort(key=job_order)

    def add(self, job: Pending) -> None:
        """Queue a job (replacing a queued job with the same id)."""
        self.discard(job.id)
        self._jobs[job.id] = job
        bisect.insort(self._groups.setdefault(job.startup, []), job, key=job_order)

    def discard(self, job_id: str) -> Pending | None:
        """Take a job out of the queue; the job, or None if it was not queued."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        group = self._groups[job.startup]
        del group[bisect.bisect_left(group, job_order(job), key=job_order)]
        if not group:
            del self._groups[job.startup]
        return job

    def get(self, job_id: str) -> Pending | None:
        """A queued job by id."""
        return self._jobs.get(job_id)

    def groups(self) -> Mapping[str, Sequence[Pending]]:
        """Each startup's queued jobs in order (read only)."""
        return self._groups

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Pending]:
        return iter(self._jobs.values())

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

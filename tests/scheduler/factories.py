"""Small builders for the scheduling tests: nodes, queued jobs and running jobs with defaults."""

from __future__ import annotations

from scheduler.records import Node, Pending, Reservation

NOW = 1_800_000_000.0


def nodes(count: int, gpus: int = 8, gpu_type: str = "default", prefix: str = "n") -> list[Node]:
    return [Node(f"{prefix}{i}", gpu_type, gpus) for i in range(count)]


def job(
    id: str,
    startup: str = "s1",
    gpus: int = 1,
    *,
    at: float = NOW - 100,
    runtime: float = 3600.0,
    gpu_type: str | None = None,
    priority: int = 0,
) -> Pending:
    return Pending(id, startup, gpus, gpu_type, runtime, at, priority)


def running(
    id: str, node_id: str, gpus: int, *, ends_in: float | None = 3600.0, startup: str | None = "other"
) -> Reservation:
    return Reservation(id, startup, node_id, gpus, None if ends_in is None else NOW + ends_in)

"""Pure routing decisions: which replicas a caller may use, and which one gets the next request."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from vouchers.models import WorkerRecord


def visible(workers: Iterable[WorkerRecord], model: str, startup_id: str) -> list[WorkerRecord]:
    """Replicas of `model` this startup may use: shared ones and its own private deployments."""
    return [w for w in workers if w.model == model and (w.owner is None or w.owner == startup_id)]


def pick(
    replicas: Iterable[WorkerRecord],
    *,
    healthy: Collection[str],
    in_flight: Mapping[str, int],
    exclude: Collection[str] = (),
) -> WorkerRecord | None:
    """The healthy replica with the fewest requests in flight, preferring those under their capacity; or None."""
    best: WorkerRecord | None = None
    best_key: tuple[bool, int, str] = (False, 0, "")
    for w in replicas:
        if w.id not in healthy or w.id in exclude:
            continue
        busy = in_flight.get(w.id, 0)
        # A full replica still gets work when all are full (its engine queues it), but only then.
        key = (busy >= w.capacity, busy, w.id)
        if best is None or key < best_key:
            best, best_key = w, key
    return best

"""How the Redis store writes records as strings and reads them back (no I/O here).

Times are written with `repr`, so a float reads back exactly; amounts as decimal integers. The fixed
fields of holds and journal lines travel as JSON built here, which the Lua scripts store unparsed.
"""

from __future__ import annotations

import json

import orjson

from vouchers.models import ChargeRef, Hold, HoldStatus, JournalLine, Voucher, WorkerRecord
from vouchers.units import Kind

# What a hold reads back as, in this order; the same list is HOLD_FIELDS in lua/_lib.lua.
HOLD_FIELDS = ("info", "amount", "allocations", "expires_at", "status", "settled")
USAGE_SEP = "\x1f"  # between the parts of a usage-total field; never part of an id, model or gpu type
# Enum construction by value is slow on the hot path; these are plain lookups.
KINDS = {k.value: k for k in Kind}
STATUSES = {s.value: s for s in HoldStatus}


def time_text(value: float) -> str:
    """A time as its exact repr."""
    return repr(float(value))


def opt_time(value: str | None) -> float | None:
    """A stored time, or None for an empty field."""
    return None if value is None or value == "" else float(value)


def parse_pairs(text: str) -> tuple[tuple[str, int], ...]:
    """Allocations or a breakdown from "vid=amount,vid=amount"."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        vid, _, amount = part.partition("=")
        out.append((vid, int(amount)))
    return tuple(out)


def hold_info(hold_id: str, startup_id: str, kind: Kind, idempotency_key: str, created_at: float) -> str:
    """The fixed fields of a hold, as the reserve script stores them."""
    fixed = {
        "id": hold_id,
        "startup_id": startup_id,
        "kind": kind,
        "idempotency_key": idempotency_key,
        "created_at": created_at,
    }
    return orjson.dumps(fixed).decode()


def line_tail(at: float, startup_id: str, kind: Kind, idempotency_key: str, hold_id: str, ref: ChargeRef) -> str:
    """The fixed fields of a journal line, as the settle script stores them after the amounts."""
    fixed = {
        "at": at,
        "startup_id": startup_id,
        "kind": kind,
        "idempotency_key": idempotency_key,
        "hold_id": hold_id,
        "ref": ref.__dict__,
    }
    return orjson.dumps(fixed).decode()


def hold_from(f: list[str]) -> Hold:
    """A hold from the scripts' HOLD_FIELDS: info JSON, amount, allocations, expires_at, status, settled."""
    info, amount, allocations, expires_at, status, settled = f
    fixed = orjson.loads(info)
    return Hold(
        id=fixed["id"],
        startup_id=fixed["startup_id"],
        kind=KINDS[fixed["kind"]],
        amount=int(amount),
        allocations=parse_pairs(allocations),
        idempotency_key=fixed["idempotency_key"],
        created_at=fixed["created_at"],
        expires_at=float(expires_at),
        status=STATUSES[status],
        settled=int(settled),
    )


def line_from(text: str) -> JournalLine:
    """A journal line from its stored form "seq|amount|overage|breakdown|JSON of the fixed fields"."""
    seq, amount, overage, breakdown, tail = text.split("|", 4)
    fixed = orjson.loads(tail)
    return JournalLine(
        seq=int(seq),
        at=fixed["at"],
        startup_id=fixed["startup_id"],
        kind=KINDS[fixed["kind"]],
        amount=int(amount),
        overage=int(overage),
        breakdown=parse_pairs(breakdown),
        idempotency_key=fixed["idempotency_key"],
        hold_id=fixed["hold_id"],
        ref=ChargeRef(**fixed["ref"]),
    )


def voucher_from(f: dict[str, str]) -> Voucher:
    """A voucher from its hash."""
    return Voucher(
        id=f["id"],
        startup_id=f["startup_id"],
        kind=Kind(f["kind"]),
        amount=int(f["amount"]),
        effective_at=float(f["effective_at"]),
        expires_at=opt_time(f["expires_at"]),
        priority=int(f["priority"]),
        note=f["note"],
        created_at=float(f["created_at"]),
        voided_at=opt_time(f["voided_at"]),
        spent=int(f["spent"]),
        held=int(f["held"]),
    )


def worker_json(worker: WorkerRecord) -> str:
    """A worker record without its heartbeat time (kept in its own field)."""
    fields = {k: v for k, v in worker.__dict__.items() if k != "heartbeat_at"}
    return json.dumps(fields)

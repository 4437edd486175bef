"""The JSON shapes at the edge: amounts as decimal strings, times as RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vouchers import rules
from vouchers.deployments import Deployment
from vouchers.errors import InvalidRequest
from vouchers.jobs import Estimate, Job, JobStatus
from vouchers.models import ApiKey, Balance, JournalLine, KindBalance, Limits, Price, Startup, Voucher
from vouchers.units import Kind, format_amount


def rfc3339(ts: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC timestamp."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object, param: str) -> float:
    """RFC 3339 text or epoch seconds -> epoch seconds; 400 naming `param` otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise InvalidRequest(f"'{param}' must be RFC 3339 or epoch seconds", param=param) from exc
        if parsed.tzinfo is None:
            raise InvalidRequest(f"'{param}' needs a time zone (e.g. Z)", param=param)
        return parsed.timestamp()
    raise InvalidRequest(f"'{param}' must be RFC 3339 or epoch seconds", param=param)


def startup(s: Startup) -> dict[str, Any]:
    return {"id": s.id, "object": "startup", "name": s.name, "created_at": rfc3339(s.created_at)}


def api_key(k: ApiKey) -> dict[str, Any]:
    return {"id": k.id, "object": "api_key", "startup": k.startup_id, "name": k.name, "prefix": k.prefix,
            "created_at": rfc3339(k.created_at), "revoked_at": rfc3339(k.revoked_at)}


def voucher(v: Voucher) -> dict[str, Any]:
    return {
        "id": v.id, "object": "voucher", "startup": v.startup_id, "kind": v.kind.value,
        "amount": format_amount(v.amount, v.kind), "spent": format_amount(v.spent, v.kind),
        "held": format_amount(v.held, v.kind), "remaining": format_amount(max(rules.free(v), 0), v.kind),
        "effective_at": rfc3339(v.effective_at), "expires_at": rfc3339(v.expires_at), "priority": v.priority,
        "note": v.note, "created_at": rfc3339(v.created_at), "voided_at": rfc3339(v.voided_at),
    }


def _kind_balance(b: KindBalance, kind: Kind) -> dict[str, str]:
    return {name: format_amount(getattr(b, name), kind) for name in ("granted", "spent", "held", "remaining")}


def balance(b: Balance) -> dict[str, Any]:
    return {
        "startup": b.startup_id,
        "model": {**_kind_balance(b.model, Kind.MODEL), "unit": "credits"},
        "compute": {**_kind_balance(b.compute, Kind.COMPUTE), "unit": "gpu-hours"},
        "vouchers": [voucher(v) for v in b.vouchers],
    }


def journal_line(line: JournalLine) -> dict[str, Any]:
    ref = line.ref
    out: dict[str, Any] = {
        "seq": line.seq, "time": rfc3339(line.at), "kind": line.kind.value,
        "amount": format_amount(line.amount, line.kind), "overage": format_amount(line.overage, line.kind),
        "reference": ref.reference,
    }
    if line.kind is Kind.MODEL:
        out.update(model=ref.model, prompt_tokens=ref.prompt_tokens, completion_tokens=ref.completion_tokens)
    else:
        out.update(job=ref.reference, gpu_type=ref.gpu_type)
    return out


def price(p: Price) -> dict[str, str]:
    return {"model": p.model, "input_per_1m": format_amount(p.input_per_1m, Kind.MODEL),
            "output_per_1m": format_amount(p.output_per_1m, Kind.MODEL)}


def limits(lim: Limits) -> dict[str, int | None]:
    return {"rpm": lim.rpm, "tpm": lim.tpm, "max_gpus": lim.max_gpus, "max_queued_jobs": lim.max_queued_jobs}


def job(j: Job, estimate: Estimate | None = None) -> dict[str, Any]:
    """A job as its owner sees it: raw GPU-seconds charged, and the weighted GPU-hours its vouchers paid."""
    queued = j.status is JobStatus.QUEUED
    return {
        "id": j.id, "object": "job", "name": j.name, "status": j.status.value, "entrypoint": j.entrypoint,
        "gpus": j.gpus, "gpu_type": j.gpu_type, "max_runtime_s": j.max_runtime_s, "env": dict(j.env),
        "queued_at": rfc3339(j.queued_at), "started_at": rfc3339(j.started_at), "ended_at": rfc3339(j.ended_at),
        "reason": j.reason or None, "node": j.node_id, "node_gpu_type": j.started_gpu_type,
        "charged_gpu_seconds": j.charged_gpu_ms / 1000, "charged_gpu_hours": format_amount(j.charged_ms, Kind.COMPUTE),
        "held_gpu_hours": format_amount(j.gpus * j.max_runtime_s * j.weight_milli, Kind.COMPUTE),
        "queue_position": estimate.position if queued and estimate else None,
        "estimated_start_at": rfc3339(estimate.start_at) if queued and estimate else None,
    }


def deployment(d: Deployment) -> dict[str, Any]:
    """A deployment as the admin sees it, with where its replicas run and (private ones) what they burned."""
    return {
        "id": d.id, "object": "deployment", "name": d.name, "engine": d.engine, "model": d.model, "gpus": d.gpus,
        "replicas": d.replicas, "owner": d.owner or "shared", "gpu_type": d.gpu_type, "state": d.state.value,
        "reason": d.reason or None, "stop_requested": d.stop_requested, "created_at": rfc3339(d.created_at),
        "started_at": rfc3339(d.started_at), "stopped_at": rfc3339(d.stopped_at),
        "replica_nodes": list(d.nodes), "charged_gpu_seconds": d.charged_gpu_ms / 1000,
        "charged_gpu_hours": format_amount(d.charged_ms, Kind.COMPUTE),
    }

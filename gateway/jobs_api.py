"""The founder's job API: submit, list, show, cancel, logs. The gateway records; the scheduler runs.

A submit is checked against the cluster the scheduler last published (no Ray call here), then holds
its worst case (gpus x max_runtime x the GPU type's weight) on the startup's compute vouchers and
records the job QUEUED. Nothing is held for a request that is refused, and a refused hold creates no job.
A startup sees only its own jobs: another's is 404, as if it did not exist.
"""

from __future__ import annotations

import base64
import binascii
import zipfile
from io import BytesIO
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway import wire
from gateway.auth import startup_caller
from gateway.context import Gateway, gateway_of
from gateway.errors import IdempotencyMismatch, PayloadTooLarge, ServiceUnavailable
from gateway.openai_api import read_body
from vouchers.errors import InsufficientQuota, InvalidRequest, NotFound
from vouchers.job_rules import JobRequest, hold_ms, validate
from vouchers.jobs import Job, JobStatus, QueueFull
from vouchers.keys import new_id
from vouchers.units import Kind, format_amount

_MAX_IDEMPOTENCY_KEY = 255
_CANCEL_REASON = "cancelled by the startup"


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    entrypoint: Annotated[str, Field(min_length=1)]
    gpus: int = 1
    max_runtime_s: int
    gpu_type: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    name: Annotated[str, Field(max_length=200)] = ""
    env: dict[str, str] = Field(default_factory=dict)
    working_dir_zip: str | None = None  # base64 of a zip archive (the CLI's --working-dir)


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _parse(raw: bytes) -> JobIn:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("The body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    try:
        return JobIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from exc


def _archive(body: JobIn, limit: int) -> bytes | None:
    if body.working_dir_zip is None:
        return None
    if len(body.working_dir_zip) > (limit + 2) // 3 * 4:
        raise PayloadTooLarge(f"The working directory archive is larger than {limit} bytes.")
    try:
        data = base64.b64decode(body.working_dir_zip, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("'working_dir_zip' must be base64", param="working_dir_zip") from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"The working directory archive is larger than {limit} bytes.")
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise InvalidRequest("'working_dir_zip' is not a zip archive", param="working_dir_zip") from exc
    if any(n.startswith("/") or ".." in n.split("/") for n in names):
        raise InvalidRequest("'working_dir_zip' has paths outside the directory", param="working_dir_zip")
    return data


async def _own(gw: Gateway, startup_id: str, job_id: str) -> Job:
    job = await gw.jobs.get(job_id)
    if job is None or job.startup_id != startup_id:
        raise NotFound(f"No job {job_id!r}.")
    return job


async def _shown(gw: Gateway, jobs: list[Job]) -> list[dict[str, Any]]:
    estimates = await gw.scheduling.estimates([j.id for j in jobs if j.status is JobStatus.QUEUED])
    return [wire.job(j, estimates.get(j.id)) for j in jobs]


async def submit_job(request: Request) -> Response:
    """POST /v1/jobs: 201 with the job QUEUED; 429 insufficient_quota when compute vouchers do not cover it."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    s = gw.settings
    raw = await read_body(request, s.max_job_archive_bytes * 4 // 3 + 64 * 1024)
    body = _parse(raw)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= _MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters.")
    archive = _archive(body, s.max_job_archive_bytes)
    nodes = await gw.scheduling.capacity()
    if nodes is None:
        raise ServiceUnavailable("The scheduler has not reported the cluster yet; try again shortly.",
                                   headers={"retry-after": "5"})
    spec = JobRequest(entrypoint=body.entrypoint, gpus=body.gpus, max_runtime_s=body.max_runtime_s,
                      gpu_type=body.gpu_type, name=body.name, env=body.env)
    weight = validate(spec, nodes, max_runtime_s=s.max_job_runtime_s, weights=gw.gpu_weights)
    amount = hold_ms(spec.gpus, spec.max_runtime_s, weight)
    job_id = new_id("job")
    try:
        hold = await gw.stores.ledger.reserve(caller.startup_id, Kind.COMPUTE, amount, ttl_s=s.job_hold_ttl_s,
                                      idempotency_key=f"job:{key or job_id}", key_id=caller.key_id)
    except InsufficientQuota:
        available = (await gw.stores.ledger.balance(caller.startup_id)).compute.remaining
        raise InsufficientQuota(
            f"This job needs {format_amount(amount, Kind.COMPUTE)} GPU-hours of compute vouchers "
            f"({spec.gpus} GPU x {spec.max_runtime_s} s x weight {weight / 1000:g}); "
            f"{format_amount(available, Kind.COMPUTE)} are available.") from None
    job = Job(id=job_id, startup_id=caller.startup_id, entrypoint=spec.entrypoint, gpus=spec.gpus,
              max_runtime_s=spec.max_runtime_s, hold_id=hold.id, queued_at=gw.clock.now(), gpu_type=spec.gpu_type,
              name=spec.name, env=dict(spec.env or {}), weight_milli=weight, idempotency_key=key,
              has_archive=archive is not None)
    limits = await gw.stores.catalog.get_limits(caller.startup_id)
    try:
        created = await gw.jobs.create(job, archive=archive, max_queued=limits.max_queued_jobs)
    except QueueFull:
        if not hold.replayed:
            await gw.stores.ledger.release(hold.id)
        raise
    if created.replayed:
        if (created.entrypoint, created.gpus, created.max_runtime_s, created.gpu_type) != (
                job.entrypoint, job.gpus, job.max_runtime_s, job.gpu_type):
            raise IdempotencyMismatch("This Idempotency-Key was used for another job.",
                                      headers={"x-should-retry": "false"})
        return _json((await _shown(gw, [created]))[0], 200, {"idempotent-replayed": "true"})
    await gw.scheduling.touch()
    return _json((await _shown(gw, [created]))[0], 201)


async def list_jobs(request: Request) -> Response:
    """GET /v1/jobs: the caller's jobs, newest first (`?status=QUEUED,RUNNING`, `?limit=`)."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    query = request.query_params
    statuses = None
    if "status" in query:
        try:
            statuses = [JobStatus(s.strip().upper()) for s in query["status"].split(",") if s.strip()]
        except ValueError as exc:
            raise InvalidRequest(f"'status' must be among {', '.join(JobStatus)}", param="status") from exc
    limit = 100
    if "limit" in query:
        if not query["limit"].isdigit() or not 0 < int(query["limit"]) <= 10_000:
            raise InvalidRequest("'limit' must be an integer from 1 to 10000", param="limit")
        limit = int(query["limit"])
    jobs = await gw.jobs.list_jobs(caller.startup_id, statuses=statuses, limit=limit)
    return _json({"object": "list", "data": await _shown(gw, jobs)})


async def get_job(request: Request) -> Response:
    """GET /v1/jobs/{id}: one of the caller's jobs; another startup's is 404."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    job = await _own(gw, caller.startup_id, request.path_params["job_id"])
    return _json((await _shown(gw, [job]))[0])


async def cancel_job(request: Request) -> Response:
    """POST /v1/jobs/{id}/cancel: the job, now CANCELLED (or as it was, if it had already ended)."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    job = await _own(gw, caller.startup_id, request.path_params["job_id"])
    changes = {"ended_at": gw.clock.now(), "reason": _CANCEL_REASON}
    for _ in range(3):  # the scheduler may move it between our read and our write
        if job.status.is_terminal():
            break
        moved = await gw.jobs.transition(job.id, job.status, JobStatus.CANCELLED, changes)
        if moved is not None:
            if job.status is JobStatus.QUEUED:
                await gw.stores.ledger.release(job.hold_id)
            await gw.scheduling.touch()  # a running one is stopped and settled by the scheduler
            job = moved
            break
        job = await _own(gw, caller.startup_id, job.id)
    return _json((await _shown(gw, [job]))[0])


async def job_logs(request: Request) -> Response:
    """GET /v1/jobs/{id}/logs: what the job printed (its tail), as text."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    job = await _own(gw, caller.startup_id, request.path_params["job_id"])
    return PlainTextResponse(await gw.jobs.logs(job.id) or "")


def routes() -> list[Route]:
    return [
        Route("/v1/jobs", submit_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/logs", job_logs, methods=["GET"]),
    ]

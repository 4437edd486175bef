"""The scheduler's only door to Ray: an async client of a cluster's Jobs and State REST APIs.

Everything goes over the dashboard's HTTP API with the cluster token (`Authorization: Bearer`),
through one `httpx.AsyncClient`, and every call is bounded as a whole by `timeout_s`: a hung
dashboard raises `RayUnavailable` instead of hanging the scheduler, and nothing blocks the loop
(zipping a working dir runs in a thread). `JobSubmissionClient` is not used: it is synchronous,
checks the server version on construction, and has no per-call timeout.

What Ray does, as measured on Ray 2.60 (see tests/scheduler/test_ray_jobs.py):
- A second submit with an existing `submission_id` is refused with HTTP 500 and a traceback;
  `submit` then reads the job and returns normally if it exists, so a retried submit is harmless.
- `entrypoint_num_gpus` reserves GPUs for the entrypoint process only (it runs inside a
  JobSupervisor actor created by the dashboard's own job, so it never shows under the job's Ray
  job id); GPUs the job's tasks, actors and placement groups take are extra, which
  `gpus_by_job` reports. Ray's default `entrypoint_num_cpus` is 0 already; it is sent explicitly.
- A job's Ray `job_id` (hex) exists only once its entrypoint calls `ray.init()`.
- A GPU type is the resource `accelerator_type:T` (Ray's own convention; its value is 1 per node),
  requested as a tiny fraction so that any number of jobs fit on a node of that type.
- Task states reach the State API with a delay of about a second (task events are batched).
- Node lost under a running job (its processes SIGKILLed; measured 2026-12-05, see
  `test_a_node_lost_under_a_running_job_fails_the_job`): Ray declares the node dead after about
  15 s (missed health checks; `RayNode.alive` False, `end_time` set), and the job goes FAILED
  about 20 s after the loss, with `error_type` "JOB_SUPERVISOR_ACTOR_DIED" and a message holding
  "its node has died". Ray's `end_time` is when it noticed, not the loss: to charge up to the
  loss, the scheduler can take the node's `end_time` (15 s late, not 20), and maps this pair to
  FAILED with reason `node_lost`.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import hashlib
import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

GPU_TYPE_PREFIX = "accelerator_type:"
DEFAULT_GPU_TYPE = "default"
# Asked per job: any fraction works since a node of type T carries `accelerator_type:T` = 1.
GPU_TYPE_REQUEST = 0.001
_STATE_LIMIT = 10_000  # the State API truncates at 100 by default


NODE_ID_LABEL = "ray.io/node-id"


class RayError(Exception):
    """Ray refused or failed a call (the dashboard answered, with an error)."""


class RayUnavailable(RayError):
    """The dashboard did not answer within the timeout, or could not be reached."""


class RayJobStatus(enum.StrEnum):
    """Ray's job states (not shuqi's: the scheduler maps these onto its own)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        return self in (RayJobStatus.STOPPED, RayJobStatus.SUCCEEDED, RayJobStatus.FAILED)


@dataclass(frozen=True)
class RayJob:
    """One submitted job as Ray reports it; times in seconds since the epoch."""

    submission_id: str
    status: RayJobStatus
    message: str
    start_time: float | None
    end_time: float | None
    driver_node_id: str | None
    job_id: str | None  # Ray's hex job id, once the entrypoint called ray.init()
    error_type: str | None = None
    driver_exit_code: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RayNode:
    """One node of the cluster: its GPUs and their type, from Ray itself."""

    node_id: str
    alive: bool
    gpus: float
    gpu_type: str
    is_head: bool = False
    end_time: float | None = None  # when Ray declared it dead (seconds since the epoch)


def _seconds(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000.0


def parse_job(data: Mapping[str, Any]) -> RayJob | None:
    """A RayJob from the Jobs API's JSON; None for drivers that were not submitted as jobs."""
    submission_id = data.get("submission_id")
    if not submission_id:
        return None
    return RayJob(
        submission_id=str(submission_id),
        status=RayJobStatus(data["status"]),
        message=str(data.get("message") or ""),
        start_time=_seconds(data.get("start_time")),
        end_time=_seconds(data.get("end_time")),
        driver_node_id=data.get("driver_node_id"),
        job_id=data.get("job_id"),
        error_type=data.get("error_type"),
        driver_exit_code=data.get("driver_exit_code"),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
    )


def gpu_type_of(resources: Mapping[str, float]) -> str:
    """The GPU type a node's resources declare (`accelerator_type:T`), else "default"."""
    types = sorted(name[len(GPU_TYPE_PREFIX):] for name in resources if name.startswith(GPU_TYPE_PREFIX))
    return types[0] if types else DEFAULT_GPU_TYPE


def parse_node(data: Mapping[str, Any]) -> RayNode:
    """A RayNode from the State API's JSON."""
    resources = data.get("resources_total") or {}
    return RayNode(
        node_id=str(data["node_id"]),
        alive=data.get("state") == "ALIVE",
        gpus=float(resources.get("GPU", 0.0)),
        gpu_type=gpu_type_of(resources),
        is_head=bool(data.get("is_head_node")),
        end_time=_seconds(data.get("end_time_ms") or None),
    )


def gpus_held(actors: list[Mapping[str, Any]], tasks: list[Mapping[str, Any]],
              groups: list[Mapping[str, Any]]) -> dict[str, float]:
    """GPUs held per Ray job id (hex): live actors, running normal tasks, created placement groups.

    An actor or task inside a placement group uses GPUs the group already holds, so only the group
    counts. Actor tasks hold nothing of their own (the actor does).
    """
    held: dict[str, float] = {}

    def add(job_id: Any, gpus: float) -> None:
        if job_id and gpus > 0:
            held[str(job_id)] = held.get(str(job_id), 0.0) + gpus

    for actor in actors:
        if not actor.get("placement_group_id"):
            add(actor.get("job_id"), float((actor.get("required_resources") or {}).get("GPU", 0.0)))
    for task in tasks:
        if not task.get("placement_group_id"):
            add(task.get("job_id"), float((task.get("required_resources") or {}).get("GPU", 0.0)))
    for group in groups:
        bundles = group.get("bundles") or []
        add(group.get("creator_job_id"), sum(float((b.get("unit_resources") or {}).get("GPU", 0.0)) for b in bundles))
    return held


def read_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The cluster token as Ray looks for it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    explicit = env.get("RAY_AUTH_TOKEN_PATH")
    path = Path(explicit) if explicit else (home or Path.home()) / ".ray" / "auth_token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def package_working_dir(path: Path) -> tuple[str, bytes]:
    """(Ray package name, zip bytes) for a directory or an existing .zip; blocking, run in a thread.

    Ray names a GCS package by its content (`_ray_pkg_<sha1>.zip`) and unpacks it as-is into the
    job's working directory, so members are stored relative to the directory.
    """
    if path.is_file():
        data = path.read_bytes()
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in sorted(path.rglob("*")):
                if member.is_file() or (member.is_dir() and not any(member.iterdir())):
                    archive.write(member, member.relative_to(path))
        data = buffer.getvalue()
    return f"_ray_pkg_{hashlib.sha1(data).hexdigest()}.zip", data


class RayJobs:
    """Async client of one cluster's Jobs API and State API (see the module docstring)."""

    def __init__(self, dashboard_url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(base_url=dashboard_url.rstrip("/"), headers=headers, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RayJobs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._http.request(method, path, **kwargs)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise RayUnavailable(f"Ray dashboard: {method} {path} took more than {self._timeout_s}s") from exc
        except httpx.TransportError as exc:
            raise RayUnavailable(f"Ray dashboard: {method} {path}: {exc!r}") from exc

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            raise RayError(f"Ray dashboard: {response.request.method} {response.request.url.path}: "
                           f"HTTP {response.status_code}: {response.text[-500:]}")
        return response

    async def _upload(self, working_dir: Path) -> str:
        name, data = await asyncio.to_thread(package_working_dir, working_dir)
        exists = await self._request("GET", f"/api/packages/gcs/{name}")
        if exists.status_code == 404:
            self._check(await self._request("PUT", f"/api/packages/gcs/{name}", content=data))
        else:
            self._check(exists)
        return f"gcs://{name}"

    async def submit(self, *, submission_id: str, entrypoint: str, gpus: float, gpu_type: str | None,
                     env: Mapping[str, str], working_dir: Path | None, metadata: Mapping[str, str],
                     node_id: str | None = None) -> None:
        """Start a job under `submission_id`; a second submit of the same id is a no-op.

        `gpu_type` None or "default" asks for no particular type. `working_dir` is a directory or a
        .zip of one; it is uploaded to the cluster (content-addressed, so once per content).
        """
        runtime_env: dict[str, Any] = {"env_vars": dict(env)}
        if working_dir is not None:
            runtime_env["working_dir"] = await self._upload(working_dir)
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "entrypoint_num_gpus": gpus,
            "entrypoint_num_cpus": 0,  # the entrypoint waits on its GPU work; 2 cores are precious
            "runtime_env": runtime_env,
            "metadata": dict(metadata),
        }
        if gpu_type and gpu_type != DEFAULT_GPU_TYPE:
            body["entrypoint_resources"] = {GPU_TYPE_PREFIX + gpu_type: GPU_TYPE_REQUEST}
        if node_id:
            # Pinned to the node the scheduler placed it on (Ray's default node label), so its plan and
            # Ray's placement agree and backfill reservations hold.
            body["entrypoint_label_selector"] = {NODE_ID_LABEL: node_id}
        response = await self._request("POST", "/api/jobs/", json=body)
        if response.status_code == 200:
            return
        # Ray refuses a known submission_id with a 500 and a traceback: it is a retry if the job exists.
        if await self.get(submission_id) is None:
            self._check(response)

    async def get(self, submission_id: str) -> RayJob | None:
        """The job, or None if Ray does not know it."""
        response = await self._request("GET", f"/api/jobs/{submission_id}")
        if response.status_code == 404:
            return None
        return parse_job(self._check(response).json())

    async def list(self) -> list[RayJob]:
        """Every submitted job Ray knows (drivers that were not submitted are left out)."""
        data = self._check(await self._request("GET", "/api/jobs/")).json()
        return [job for job in map(parse_job, data) if job is not None]

    async def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; False if it is unknown or already ended."""
        response = await self._request("POST", f"/api/jobs/{submission_id}/stop")
        if response.status_code == 404:
            return False
        return bool(self._check(response).json().get("stopped"))

    async def logs(self, submission_id: str) -> str:
        """The job's whole output so far ("" for an unknown job)."""
        response = await self._request("GET", f"/api/jobs/{submission_id}/logs")
        if response.status_code == 404:
            return ""
        return str(self._check(response).json().get("logs") or "")

    async def _state(self, resource: str, filters: builtins.list[tuple[str, str]]) -> builtins.list[dict[str, Any]]:
        params: builtins.list[tuple[str, str | int]] = [("detail", "true"), ("limit", _STATE_LIMIT)]
        for key, value in filters:
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        payload = self._check(await self._request("GET", f"/api/v0/{resource}", params=params)).json()
        if not payload.get("result", True):
            raise RayError(f"Ray state API /api/v0/{resource}: {payload.get('msg')}")
        result: builtins.list[dict[str, Any]] = payload["data"]["result"]["result"]
        return result

    async def nodes(self) -> builtins.list[RayNode]:
        """Every node Ray knows, dead ones included, with its GPUs and GPU type."""
        return [parse_node(node) for node in await self._state("nodes", [])]

    async def gpus_by_job(self) -> dict[str, float]:
        """GPUs each submitted job's own tasks, actors and placement groups hold, by submission_id.

        The entrypoint's own GPUs are not included (see the module docstring). A task shows up here
        about a second after it starts.
        """
        jobs, actors, tasks, groups = await asyncio.gather(
            self.list(),
            self._state("actors", [("state", "ALIVE")]),
            self._state("tasks", [("state", "RUNNING"), ("type", "NORMAL_TASK")]),
            self._state("placement_groups", [("state", "CREATED")]),
        )
        by_ray_id = {job.job_id: job.submission_id for job in jobs if job.job_id}
        held = gpus_held(actors, tasks, groups)
        return {by_ray_id[ray_id]: gpus for ray_id, gpus in held.items() if ray_id in by_ray_id}

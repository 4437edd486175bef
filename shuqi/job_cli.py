"""`shuqi job submit|list|status|logs|cancel`: GPU jobs through the gateway, with the caller's key."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from shuqi.client_cli import admin_token, api_key, base_url, call

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
_SKIP_DIRS = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", "node_modules"}
_POLL_S = 2.0


def parse_duration(text: str) -> int:
    """`90`, `90s`, `30m`, `2h`, `1h30m`, `1d` -> seconds; BadParameter otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise typer.BadParameter(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h, 1h30m")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return days * 86_400 + hours * 3600 + minutes * 60 + seconds


def zip_dir(root: Path) -> bytes:
    """The directory as a zip archive (without VCS, caches and virtualenvs)."""
    if not root.is_dir():
        raise typer.BadParameter(f"{root} is not a directory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _epoch(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _progress(job: dict[str, Any], now: float) -> str:
    """State, elapsed against the limit, GPU-hours charged, and the queue position while queued."""
    started, ended = _epoch(job["started_at"]), _epoch(job["ended_at"])
    limit = _hms(job["max_runtime_s"])
    if job["status"] == "QUEUED":
        eta = job.get("estimated_start_at") or "unknown"
        return f"{job['status']:<9} position {job.get('queue_position') or '?'}, expected start {eta}"
    elapsed = ((ended or now) - started) if started else 0.0
    reason = f"  ({job['reason']})" if job.get("reason") else ""
    return (f"{job['status']:<9} {_hms(elapsed)} of {limit}  charged {job['charged_gpu_hours']} GPU-h "
            f"({job['charged_gpu_seconds']:.0f} GPU-s){reason}")


def submit(
    command: Annotated[list[str], typer.Argument(help="the command to run, after --")],
    gpus: int = typer.Option(1, "--gpus", help="GPUs on one node"),
    max_runtime: str = typer.Option("1h", "--max-runtime", help="the limit: 90s, 30m, 2h; held up front"),
    gpu_type: str | None = typer.Option(None, "--gpu-type", help="a GPU type the cluster has"),
    name: str = typer.Option("", "--name"),
    working_dir: Annotated[Path | None, typer.Option("--working-dir", help="a directory shipped with the job")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE, repeatable")] = None,
    as_json: bool = typer.Option(False, "--json", help="print the JSON answer"),
) -> None:
    """Submit a GPU job; it starts once GPUs are free and its worst case is covered by compute vouchers."""
    body: dict[str, Any] = {"entrypoint": shlex.join(command), "gpus": gpus,
                            "max_runtime_s": parse_duration(max_runtime), "name": name}
    if gpu_type:
        body["gpu_type"] = gpu_type
    if env:
        pairs = [e.partition("=") for e in env]
        if any(not sep or not k for k, sep, _ in pairs):
            raise typer.BadParameter("--env takes KEY=VALUE")
        body["env"] = {k: v for k, _, v in pairs}
    if working_dir is not None:
        body["working_dir_zip"] = base64.b64encode(zip_dir(working_dir)).decode()
    job = call("POST", "/v1/jobs", api_key(), body=body)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    typer.echo(f"{job['id']}  {job['status']}  held {job['held_gpu_hours']} GPU-h")


def list_jobs(as_json: bool = typer.Option(False, "--json", help="print the JSON answer"),
              limit: int = typer.Option(50, "--limit")) -> None:
    """Your startup's jobs, newest first."""
    jobs = call("GET", "/v1/jobs", api_key(), params={"limit": str(limit)})["data"]
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    typer.echo(f"{'ID':<26} {'NAME':<16} {'GPUS':>4} {'TYPE':<10} {'QUEUED':<20}  PROGRESS")
    now = time.time()
    for j in jobs:
        typer.echo(f"{j['id']:<26} {(j['name'] or '-')[:16]:<16} {j['gpus']:>4} "
                   f"{(j['node_gpu_type'] or j['gpu_type'] or 'any')[:10]:<10} {j['queued_at'][:19]:<20}  "
                   f"{_progress(j, now)}")


def status(job_id: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f"),
           as_json: bool = typer.Option(False, "--json", help="print the JSON answer")) -> None:
    """One job: its state, time against its limit, GPU-hours charged; --follow until it ends."""
    while True:
        job = call("GET", f"/v1/jobs/{job_id}", api_key())
        if as_json:
            typer.echo(json.dumps(job, indent=2))
        else:
            typer.echo(f"{job['id']}  {_progress(job, time.time())}")
        if not follow or job["status"] not in ("QUEUED", "RUNNING"):
            return
        time.sleep(_POLL_S)


def _logs_text(job_id: str) -> str:
    try:
        resp = httpx.get(f"{base_url()}/v1/jobs/{job_id}/logs", timeout=60,
                         headers={"authorization": f"Bearer {api_key()}"})
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the gateway at {base_url()}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if resp.status_code >= 400:
        call("GET", f"/v1/jobs/{job_id}", api_key())  # prints the error and exits
        raise typer.Exit(1)
    return resp.text


def logs(job_id: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f")) -> None:
    """What the job printed; --follow prints more as it comes, until the job ends."""
    shown = 0
    while True:
        ended = follow and call("GET", f"/v1/jobs/{job_id}", api_key())["status"] not in ("QUEUED", "RUNNING")
        text = _logs_text(job_id)
        # The store keeps a tail: if it moved past what was shown, show the new tail whole.
        new = text[shown:] if len(text) >= shown else text
        if new:
            typer.echo(new, nl=False)
        shown = len(text)
        if not follow or ended:
            return
        time.sleep(_POLL_S)


def cancel(job_id: str = typer.Argument(...)) -> None:
    """Cancel a job: a queued one never starts; a running one is stopped and charged up to now."""
    job = call("POST", f"/v1/jobs/{job_id}/cancel", api_key())
    typer.echo(f"{job['id']}  {_progress(job, time.time())}")


def register(app: typer.Typer) -> None:
    """Add `shuqi job ...` to the root app."""
    job = typer.Typer(no_args_is_help=True, help="GPU jobs paid by compute vouchers (SHUQI_API_KEY)")
    job.command("submit")(submit)
    job.command("list")(list_jobs)
    job.command("status")(status)
    job.command("logs")(logs)
    job.command("cancel")(cancel)
    app.add_typer(job, name="job")


def deploy_create(
    name: str = typer.Argument(..., help="the model name clients will ask for"),
    engine: str = typer.Option("llamacpp", "--engine", help="llamacpp or vllm"),
    model: str = typer.Option(..., "--model", help="a path, a Hugging Face name, or bundled:smollm2"),
    gpus: int = typer.Option(1, "--gpus", help="GPUs per replica"),
    replicas: int = typer.Option(1, "--replicas"),
    owner: str = typer.Option("shared", "--owner", help="shared, or the startup whose compute vouchers pay"),
    gpu_type: str | None = typer.Option(None, "--gpu-type"),
) -> None:
    """Place a model deployment on GPU nodes through the scheduler."""
    body: dict[str, Any] = {"name": name, "engine": engine, "model": model, "gpus": gpus, "replicas": replicas,
                            "owner": owner}
    if gpu_type:
        body["gpu_type"] = gpu_type
    d = call("POST", "/admin/v1/deployments", admin_token(), body=body)
    typer.echo(f"{d['id']}  {d['state']}  {d['name']}  {d['replicas']} x {d['gpus']} GPU  owner {d['owner']}")


def deploy_list(as_json: bool = typer.Option(False, "--json", help="print the JSON answer")) -> None:
    """Deployments, with their state and where their replicas run."""
    data = call("GET", "/admin/v1/deployments", admin_token())["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{'ID':<22} {'NAME':<20} {'STATE':<8} {'REPLICAS':>8} {'OWNER':<12} GPU-H  REASON")
    for d in data:
        typer.echo(f"{d['id']:<22} {d['name'][:20]:<20} {d['state']:<8} {d['replicas']:>8} {d['owner'][:12]:<12} "
                   f"{d['charged_gpu_hours']}  {d['reason'] or ''}".rstrip())


def deploy_delete(deployment_id: str = typer.Argument(...)) -> None:
    """Stop a deployment: its replicas stop and a private one's GPU time is settled."""
    d = call("DELETE", f"/admin/v1/deployments/{deployment_id}", admin_token())
    typer.echo(f"{d['id']}  {d['state']}{'  (stopping)' if d['stop_requested'] and d['state'] != 'STOPPED' else ''}")


def register_admin(admin: typer.Typer) -> None:
    """Add `shuqi admin deploy ...` to the admin commands."""
    deploy = typer.Typer(no_args_is_help=True, help="model deployments placed by the scheduler")
    deploy.command("create")(deploy_create)
    deploy.command("list")(deploy_list)
    deploy.command("delete")(deploy_delete)
    admin.add_typer(deploy, name="deploy")

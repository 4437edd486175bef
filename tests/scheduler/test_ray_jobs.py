"""RayJobs against a real two-node cluster with logical GPUs of types "a" and "b" (a few real jobs: 2 cores)."""

from __future__ import annotations

import asyncio
import shlex
import socket
import time
import uuid
from pathlib import Path

import pytest

from scheduler.ray_jobs import RayJobs, RayJobStatus, RayUnavailable
from tests.scheduler.conftest import SECRETS, GpuCluster, poll, wait_status

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TERMINAL = {RayJobStatus.SUCCEEDED, RayJobStatus.FAILED, RayJobStatus.STOPPED}


def new_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def submit(jobs: RayJobs, entrypoint: str, *, gpus: float = 1, gpu_type: str | None = None,
                 env: dict[str, str] | None = None, working_dir: Path | None = None) -> str:
    submission_id = new_id()
    await jobs.submit(submission_id=submission_id, entrypoint=entrypoint, gpus=gpus, gpu_type=gpu_type,
                      env=env or {}, working_dir=working_dir, metadata={"startup": "acme"})
    return submission_id


def python(code: str) -> str:
    return f"python -c {shlex.quote(code)}"


async def test_a_job_runs_to_success_and_its_output_is_in_the_logs(ray_jobs: RayJobs) -> None:
    sid = await submit(ray_jobs, python("import time; print('hello from the job', flush=True); time.sleep(1.5)"))
    running = await wait_status(ray_jobs, sid, {RayJobStatus.RUNNING, *TERMINAL})
    assert running.status == RayJobStatus.RUNNING, running.message
    done = await wait_status(ray_jobs, sid, TERMINAL)
    assert done.status == RayJobStatus.SUCCEEDED, done.message
    assert done.start_time is not None and done.end_time is not None and done.end_time > done.start_time
    assert done.metadata == {"startup": "acme"}
    assert "hello from the job" in await ray_jobs.logs(sid)
    assert sid in {job.submission_id for job in await ray_jobs.list()}


async def test_a_job_asking_for_type_b_runs_on_node_b_and_sees_one_gpu(
    ray_jobs: RayJobs, gpu_cluster: GpuCluster
) -> None:
    code = "import os; print('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    sid = await submit(ray_jobs, python(code), gpus=1, gpu_type="b")
    done = await wait_status(ray_jobs, sid, TERMINAL)
    assert done.status == RayJobStatus.SUCCEEDED, done.message
    assert done.driver_node_id == gpu_cluster.node_b
    visible = (await ray_jobs.logs(sid)).rsplit("CVD=", 1)[1].split()[0]  # the last: the command line comes first
    assert len(visible.split(",")) == 1 and visible in {"0", "1"}


async def test_a_job_pinned_to_a_node_runs_there(ray_jobs: RayJobs, gpu_cluster: GpuCluster) -> None:
    # Unpinned, Ray places an entrypoint that fits on the head node (where the job manager runs) there.
    sid = new_id()
    await ray_jobs.submit(submission_id=sid, entrypoint=python("print('pinned')"), gpus=2, gpu_type=None, env={},
                          working_dir=None, metadata={}, node_id=gpu_cluster.node_b)
    done = await wait_status(ray_jobs, sid, TERMINAL)
    assert done.status == RayJobStatus.SUCCEEDED, done.message
    assert done.driver_node_id == gpu_cluster.node_b


async def test_env_vars_and_working_dir_reach_the_job(ray_jobs: RayJobs, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "data.txt").write_text("shipped data\n")
    (tmp_path / "main.py").write_text(
        "import os\nprint('GREETING=' + os.environ['GREETING'])\nprint(open('pkg/data.txt').read())\n"
    )
    sid = await submit(ray_jobs, "python main.py", env={"GREETING": "hi-from-env"}, working_dir=tmp_path)
    done = await wait_status(ray_jobs, sid, TERMINAL)
    logs = await ray_jobs.logs(sid)
    assert done.status == RayJobStatus.SUCCEEDED, logs
    assert "GREETING=hi-from-env" in logs and "shipped data" in logs


async def test_a_second_submit_with_the_same_id_starts_nothing(ray_jobs: RayJobs) -> None:
    sid = new_id()
    args = {"gpus": 1, "gpu_type": None, "env": {}, "working_dir": None, "metadata": {}}
    await ray_jobs.submit(submission_id=sid, entrypoint=python("print('first run')"), **args)  # type: ignore[arg-type]
    await ray_jobs.submit(submission_id=sid, entrypoint=python("print('second run')"), **args)  # type: ignore[arg-type]
    await wait_status(ray_jobs, sid, TERMINAL)
    logs = await ray_jobs.logs(sid)
    assert "first run" in logs and "second run" not in logs
    assert [job.submission_id for job in await ray_jobs.list()].count(sid) == 1


async def test_stop_ends_a_running_job_stopped(ray_jobs: RayJobs) -> None:
    sid = await submit(ray_jobs, python("import time; time.sleep(120)"))
    await wait_status(ray_jobs, sid, {RayJobStatus.RUNNING})
    assert await ray_jobs.stop(sid) is True
    stopped = await wait_status(ray_jobs, sid, TERMINAL, timeout_s=30)
    assert stopped.status == RayJobStatus.STOPPED
    assert await ray_jobs.stop(sid) is False


async def test_unknown_jobs_are_none_false_and_empty(ray_jobs: RayJobs) -> None:
    assert await ray_jobs.get("no-such-job") is None
    assert await ray_jobs.stop("no-such-job") is False
    assert await ray_jobs.logs("no-such-job") == ""


async def test_nodes_report_both_gpu_types_from_ray(ray_jobs: RayJobs, gpu_cluster: GpuCluster) -> None:
    nodes = {node.node_id: node for node in await ray_jobs.nodes() if node.alive}
    assert (nodes[gpu_cluster.node_a].gpus, nodes[gpu_cluster.node_a].gpu_type) == (2.0, "a")
    assert (nodes[gpu_cluster.node_b].gpus, nodes[gpu_cluster.node_b].gpu_type) == (2.0, "b")
    assert nodes[gpu_cluster.node_a].is_head and not nodes[gpu_cluster.node_b].is_head


_ACTOR_JOB = """
import time, ray
ray.init()

@ray.remote(num_gpus=1, num_cpus=0)
class Trainer:
    def ready(self):
        return True

trainer = Trainer.remote()
ray.get(trainer.ready.remote())
print("actor ready", flush=True)
time.sleep(120)
"""


async def test_gpus_by_job_charges_a_job_for_the_actor_it_launched(ray_jobs: RayJobs, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(_ACTOR_JOB)
    sid = await submit(ray_jobs, "python train.py", gpus=1, gpu_type="a", working_dir=tmp_path)
    try:
        await poll(lambda: _has(ray_jobs, sid, "actor ready"), timeout_s=90)
        held: dict[str, float] = {}

        async def charged() -> bool:
            held.update(await ray_jobs.gpus_by_job())
            return sid in held

        await poll(charged, timeout_s=15)
        assert held[sid] == 1.0  # the actor's GPU; the entrypoint's own GPU is not in this figure
    finally:
        await ray_jobs.stop(sid)
    await wait_status(ray_jobs, sid, TERMINAL, timeout_s=30)
    await poll(lambda: _released(ray_jobs, sid), timeout_s=30)


async def _has(jobs: RayJobs, sid: str, text: str) -> bool:
    job = await jobs.get(sid)
    if job is not None and job.status.is_terminal():
        pytest.fail(f"job ended {job.status}: {await jobs.logs(sid)}")
    return text in await jobs.logs(sid)


async def _released(jobs: RayJobs, sid: str) -> bool:
    return sid not in await jobs.gpus_by_job()


async def test_a_job_environment_holds_no_secret_of_the_process_that_started_ray(ray_jobs: RayJobs) -> None:
    sid = await submit(ray_jobs, python("import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')"))
    done = await wait_status(ray_jobs, sid, TERMINAL)
    logs = await ray_jobs.logs(sid)
    assert done.status == RayJobStatus.SUCCEEDED, logs
    assert "PATH=" in logs  # the job did print its environment
    leaked = [name for name, value in SECRETS.items() if value in logs or f"\n{name}=" in logs]
    assert leaked == []


async def test_a_node_lost_under_a_running_job_fails_the_job(ray_jobs: RayJobs, gpu_cluster: GpuCluster) -> None:
    node_c = await asyncio.to_thread(gpu_cluster.add_node, 1, "c")
    sid = await submit(ray_jobs, python("import time; print('started', flush=True); time.sleep(300)"), gpu_type="c")
    running = await wait_status(ray_jobs, sid, {RayJobStatus.RUNNING, *TERMINAL})
    assert running.status == RayJobStatus.RUNNING and running.driver_node_id == node_c

    lost_at = time.monotonic()
    await asyncio.to_thread(gpu_cluster.lose_node, node_c)
    node_dead_s = await poll(lambda: _node_dead(ray_jobs, node_c), timeout_s=120, interval_s=0.25)
    ended = await wait_status(ray_jobs, sid, TERMINAL, timeout_s=120)
    job_ended_s = time.monotonic() - lost_at
    print(f"node lost: node dead after {node_dead_s:.1f}s, job {ended.status} after {job_ended_s:.1f}s, "
          f"error_type={ended.error_type!r}, message={ended.message!r}")
    assert ended.status == RayJobStatus.FAILED
    # What the scheduler maps to reason `node_lost` (Ray 2.60's wording; an upgrade that changes it fails here).
    assert ended.error_type == "JOB_SUPERVISOR_ACTOR_DIED" and "node has died" in ended.message
    dead = [node for node in await ray_jobs.nodes() if node.node_id == node_c]
    assert dead[0].end_time is not None and ended.end_time is not None and dead[0].end_time <= ended.end_time


async def _node_dead(jobs: RayJobs, node_id: str) -> bool:
    return any(node.node_id == node_id and not node.alive for node in await jobs.nodes())


async def test_a_dashboard_that_is_down_raises_unavailable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        async with RayJobs(f"http://127.0.0.1:{port}", "token", timeout_s=5) as jobs:
            with pytest.raises(RayUnavailable):
                await jobs.nodes()


async def test_a_hung_dashboard_raises_within_the_timeout() -> None:
    done = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RayJobs(f"http://127.0.0.1:{port}", "token", timeout_s=0.5) as jobs:
            start = time.monotonic()
            with pytest.raises(RayUnavailable):
                await jobs.get("any")
            assert time.monotonic() - start < 2.0
    finally:
        done.set()
        server.close()
        await server.wait_closed()

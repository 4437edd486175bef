"""`shuqi worker --model NAME` without Ray: serves the model, registers it, and on SIGTERM deregisters
and stops its engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vouchers.factory import Stores
from workers.process import descendants

pytestmark = pytest.mark.slow


def _serving_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if " serves " in line:
            return line
        if not line and proc.poll() is not None:
            break
    pytest.fail("shuqi worker did not report serving")


def _start(tmp_path: Path, ray_address: str | None = None) -> subprocess.Popen[str]:
    # RAY_* stays: ray.init put the cluster's auth token there for processes that join it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHUQI_") and k != "RAY_ADDRESS"}
    env.update(SHUQI_DATA_DIR=str(tmp_path))
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    shuqi = Path(sys.executable).parent / "shuqi"
    return subprocess.Popen(
        [str(shuqi), "worker", "--model", "smollm2-135m"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env,
    )


async def test_worker_command_serves_registers_and_cleans_up_on_sigterm(
    tmp_path: Path, system_store: Stores
) -> None:
    proc = _start(tmp_path)
    try:
        line = _serving_line(proc, timeout_s=120)
        url = line.rsplit(" at ", 1)[1].strip()
        [record] = await system_store.registry.list_workers("smollm2-135m")
        assert record.url == url
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(url + "/v1/models")).json()["data"][0]["id"] == "smollm2-135m"
        engine = descendants(proc.pid)
        assert engine
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    assert await system_store.registry.list_workers() == []
    assert not any(_not_zombie(pid) for pid in engine)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _commands(pids: list[int]) -> str:
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                found.append(cmdline.read().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return " ".join(found)


@pytest.mark.ray
async def test_worker_command_with_ray_address_runs_the_engine_in_a_ray_actor(
    tmp_path: Path, system_store: Stores, ray_cluster: None
) -> None:
    import ray

    proc = _start(tmp_path, ray_address=ray.get_runtime_context().gcs_address)
    try:
        url = _serving_line(proc, timeout_s=120).rsplit(" at ", 1)[1].strip()
        [record] = await system_store.registry.list_workers("smollm2-135m")
        assert record.url == url
        # The engine runs under Ray's worker process, not under the command.
        assert "llamacpp_server" not in _commands(descendants(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    assert await system_store.registry.list_workers() == []

"""`shuqi job ...` as a founder uses it, against the gateway and scheduler on a real Ray cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shuqi.cli import app
from shuqi.job_cli import parse_duration
from tests.scheduler.conftest import GpuCluster
from tests.scheduler.stack import Stack, running_stack

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
async def stack(gpu_cluster: GpuCluster, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path, "shuqi", gpu_cluster.dashboard_url,
                             gpu_cluster.token) as s:
        yield s


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1h30m", "1d")] == [90, 90, 1800, 7200, 5400,
                                                                                        86400]


async def test_submit_follow_logs_and_list_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    await stack.onboard("acme", gpu_hours="1")
    r = await stack.admin.post("/admin/v1/startups/acme/keys", json={"name": "cli"})
    env = {"SHUQI_BASE_URL": stack.url, "SHUQI_API_KEY": r.json()["key"]}
    runner = CliRunner()

    async def run(*args: str) -> str:
        result = await asyncio.to_thread(runner.invoke, app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return str(result.output)

    work = tmp_path / "work"
    work.mkdir()
    (work / "main.py").write_text("print('hello from the working dir')\n")
    submitted = json.loads(await run("job", "submit", "--gpus", "1", "--max-runtime", "1m", "--working-dir",
                                     str(work), "--json", "--", "python", "main.py"))
    assert submitted["status"] == "QUEUED" and submitted["max_runtime_s"] == 60
    followed = await run("job", "status", submitted["id"], "--follow")
    assert "SUCCEEDED" in followed.splitlines()[-1]
    assert "hello from the working dir" in await run("job", "logs", submitted["id"])
    assert "hello from the working dir" in await run("job", "logs", submitted["id"], "--follow")
    listed = await run("job", "list")
    assert submitted["id"] in listed and "SUCCEEDED" in listed
    balance = json.loads(await run("balance", "--json"))
    assert balance["compute"]["held"] == "0" and balance["compute"]["spent"] != "0"
    refused = await asyncio.to_thread(runner.invoke, app, ["job", "submit", "--gpus", "2", "--max-runtime", "1h",
                                                           "--", "true"], env=env)
    assert refused.exit_code == 1 and "insufficient_quota" in refused.output

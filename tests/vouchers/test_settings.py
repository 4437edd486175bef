"""One settings source: every SHUQI_* variable is read by `vouchers.settings` and nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shuqi.cli import app
from vouchers.settings import ClientSettings, GatewaySettings, UpSettings, WorkerNodeSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vouchers", "gateway", "scheduler", "workers", "shuqi")
SETTINGS_MODULE = ROOT / "vouchers" / "settings.py"


def _reads_shuqi_variable(node: ast.AST) -> bool:
    """A call like env.get("SHUQI_X") / os.getenv("SHUQI_X"), a subscript environ["SHUQI_X"], or a
    pydantic-settings env_prefix: the ways a module could read the environment itself."""
    def shuqi(arg: ast.AST) -> bool:
        return isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("SHUQI_")

    if isinstance(node, ast.Call):
        if any(k.arg == "env_prefix" for k in node.keywords):
            return True
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return name in {"get", "getenv", "pop", "setdefault", "getenvb"} and any(shuqi(a) for a in node.args[:1])
    return isinstance(node, ast.Subscript) and shuqi(node.slice)


def test_no_module_but_the_settings_module_reads_a_shuqi_variable() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == SETTINGS_MODULE:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if _reads_shuqi_variable(n)]
    assert offenders == []


def test_the_scan_sees_a_module_that_reads_one() -> None:
    # The check above must be able to fail.
    tree = ast.parse('import os\nport = os.environ.get("SHUQI_PORT")\nhost = os.environ["SHUQI_HOST"]\n')
    assert sum(_reads_shuqi_variable(n) for n in ast.walk(tree)) == 2


def test_every_service_reads_the_same_variable_the_same_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHUQI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SHUQI_STORE", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SHUQI_PORT", "9123")
    monkeypatch.setenv("SHUQI_LOGICAL_GPUS", "2")
    monkeypatch.setenv("SHUQI_WORKER_ADVERTISE", "")  # empty counts as unset
    up, gateway, node, client = UpSettings(), GatewaySettings(), WorkerNodeSettings(), ClientSettings()
    assert up.data_dir == gateway.data_dir == node.data_dir == client.data_dir == tmp_path
    assert up.store_url() == gateway.store_url() == node.store_url() == "redis://127.0.0.1:1/0"
    assert (up.port, gateway.port, up.logical_gpus, node.worker_advertise) == (9123, 9123, 2, None)


def test_the_embedded_store_is_named_by_its_absolute_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHUQI_STORE", raising=False)
    monkeypatch.setenv("SHUQI_DATA_DIR", "relative/dir")
    assert UpSettings().store_url() == f"sqlite:///{(Path('relative/dir') / 'ledger.db').resolve()}"


def test_shuqi_config_prints_the_settings_with_secrets_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHUQI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SHUQI_ADMIN_TOKEN", "admin-secret-123")
    monkeypatch.setenv("SHUQI_API_KEY", "sk-shuqi-secret-456")
    monkeypatch.setenv("SHUQI_STORE", "redis://:redis-pass-789@10.0.0.5:6380/2")
    monkeypatch.setenv("SHUQI_PORT", "9001")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    lines = set(result.output.splitlines())
    assert {"SHUQI_PORT=9001", f"SHUQI_DATA_DIR={tmp_path}", "SHUQI_ADMIN_TOKEN=********",
            "SHUQI_API_KEY=********", "SHUQI_STORE=redis://:********@10.0.0.5:6380/2"} <= lines
    for secret in ("admin-secret-123", "sk-shuqi-secret-456", "redis-pass-789"):
        assert secret not in result.output

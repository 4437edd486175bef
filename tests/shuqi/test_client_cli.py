"""The client CLI (`shuqi balance`, `shuqi usage`, `shuqi admin ...`) against a real running gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.app import create_app
from shuqi.cli import app
from tests.gateway.fake_upstream import UvicornThread
from vouchers.settings import GatewaySettings

ADMIN = "cli-admin-token"


@pytest.fixture
def gateway_url(tmp_path: Path) -> Iterator[str]:
    settings = GatewaySettings(store=f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path, admin_token=ADMIN)
    server = UvicornThread(create_app(settings), lifespan="on", as_gateway=True)
    server.start()
    yield server.url
    server.stop()


def test_admin_then_founder_commands(gateway_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    admin_env = {"SHUQI_BASE_URL": gateway_url, "SHUQI_ADMIN_TOKEN": ADMIN}

    def run(args: list[str], env: dict[str, str]) -> str:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        return result.output

    assert "created startup acme" in run(["admin", "startup", "create", "acme", "--name", "Acme AI"], admin_env)
    key = run(["admin", "key", "create", "acme"], admin_env).strip()
    assert key.startswith("sk-shuqi-")
    run(["admin", "voucher", "grant", "acme", "--kind", "model", "--amount", "12.5"], admin_env)
    run(["admin", "voucher", "grant", "acme", "--kind", "compute", "--amount", "2", "--expires-at",
         "2031-01-01T00:00:00Z", "--priority", "1"], admin_env)
    admin_view = json.loads(run(["admin", "balance", "acme", "--json"], admin_env))
    assert admin_view["model"]["remaining"] == "12.5" and admin_view["compute"]["granted"] == "2"

    founder_env = {"SHUQI_BASE_URL": gateway_url, "SHUQI_API_KEY": key}
    mine = json.loads(run(["balance", "--json"], founder_env))
    assert mine["model"]["granted"] == "12.5"
    assert "remaining" in run(["balance"], founder_env) and "12.5" in run(["balance"], founder_env)
    assert json.loads(run(["usage", "--json"], founder_env)) == []

    # Without SHUQI_ADMIN_TOKEN the CLI reads the token file in SHUQI_DATA_DIR, as the gateway writes it.
    (tmp_path / "cli-data").mkdir()
    (tmp_path / "cli-data" / "admin-token").write_text(ADMIN + "\n")
    listed = run(["admin", "startup", "list", "--json"], {"SHUQI_BASE_URL": gateway_url,
                                                          "SHUQI_DATA_DIR": str(tmp_path / "cli-data"),
                                                          "SHUQI_ADMIN_TOKEN": ""})
    assert [s["id"] for s in json.loads(listed)] == ["acme"]


def test_errors_exit_non_zero_with_the_gateway_message(gateway_url: str) -> None:
    runner = CliRunner()
    bad_key = runner.invoke(app, ["balance"], env={"SHUQI_BASE_URL": gateway_url, "SHUQI_API_KEY": "sk-shuqi-no"})
    assert bad_key.exit_code == 1 and "invalid_api_key" in bad_key.output
    env = {"SHUQI_BASE_URL": gateway_url, "SHUQI_ADMIN_TOKEN": ADMIN}
    runner.invoke(app, ["admin", "startup", "create", "acme", "--name", "A"], env=env)
    again = runner.invoke(app, ["admin", "startup", "create", "acme", "--name", "A"], env=env)
    assert again.exit_code == 1 and "conflict" in again.output

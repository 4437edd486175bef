"""What a Ray node started by shuqi is given: a scrubbed environment, token auth, the right interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

from shuqi.ray_head import default_token, node_env, scrubbed_env

PARENT = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "SHUQI_ADMIN_TOKEN": "admin-secret",
    "SHUQI_STORE": "redis://:pw@127.0.0.1:6379/0",
    "SHUQI_PORT": "8000",
    "SHUQI_VLLM_PYTHON": "/opt/vllm/bin/python",
    "REDIS_URL": "redis://127.0.0.1:6379/4",
    "OPENAI_API_KEY": "sk-x",
    "aws_secret_access_key": "x",
    "GITHUB_TOKEN": "ghp_x",
    "PGPASSWORD": "x",
    "ARTIFACTS": "https://user:pw@example.com/a",
    "RAY_AUTH_TOKEN": "ray-token",
    "RAY_AUTH_MODE": "token",
    "RAY_ADDRESS": "10.0.0.1:6379",
}


def test_scrubbed_env_drops_secrets_and_shuqi_settings_and_keeps_the_rest() -> None:
    kept = scrubbed_env(PARENT)
    assert kept == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "SHUQI_VLLM_PYTHON": "/opt/vllm/bin/python",  # a path the vLLM worker actor reads inside Ray
        "RAY_AUTH_TOKEN": "ray-token",
        "RAY_AUTH_MODE": "token",
        "RAY_ADDRESS": "10.0.0.1:6379",
    }


def test_node_env_sets_this_cluster_token_and_puts_this_interpreter_first_on_path() -> None:
    env = node_env("cluster-token", PARENT)
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", "cluster-token")
    assert "RAY_ADDRESS" not in env and "SHUQI_ADMIN_TOKEN" not in env
    assert env["PATH"].split(":") == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]


def test_default_token_is_created_once_with_mode_600(tmp_path: Path) -> None:
    first = default_token(home=tmp_path)
    path = tmp_path / ".ray" / "auth_token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32 and default_token(home=tmp_path) == first

"""Self-install what the benchmark compares with: wrk and nginx from Debian, LiteLLM in its own venv.

LiteLLM stays out of the project venv (`.venv-litellm`, pinned) because its dependency tree is large
and pins versions the project does not want.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

LITELLM_SPEC = "litellm[proxy]==1.108.7"

log = logging.getLogger(__name__)


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {' '.join(packages)}: install them (apt-get install {' '.join(packages)})")
    log.info("installing %s with apt-get", " ".join(packages))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, capture_output=True)


def nginx_binary() -> str | None:
    """Where nginx is, whether or not /usr/sbin is on PATH."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def ensure_debian_tools(*, nginx: bool) -> None:
    """Install wrk (and nginx when asked) from Debian packages when they are missing."""
    missing = [] if shutil.which("wrk") else ["wrk"]
    if nginx and nginx_binary() is None:
        missing.append("nginx-light")
    if missing:
        _apt_install(missing)


def ensure_redis() -> str:
    """The redis-server binary, installed from Debian when missing."""
    if shutil.which("redis-server") is None:
        _apt_install(["redis-server"])
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed")
    return path


def ensure_litellm(root: Path) -> Path:
    """The `litellm` executable of root/.venv-litellm, creating the venv and installing LiteLLM if needed."""
    venv = root / ".venv-litellm"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    log.info("installing %s into %s (a few minutes)", LITELLM_SPEC, venv)
    if not (venv / "bin" / "pip").exists():
        # The system interpreter, not the project venv's, so the new venv does not inherit its packages.
        base = shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True)
    return exe


def py_spy(root: Path) -> Path:
    """A py-spy executable for profiling, installed into the LiteLLM venv (kept out of the project venv)."""
    exe = root / ".venv-litellm" / "bin" / "py-spy"
    if not exe.exists():
        ensure_litellm(root)
        subprocess.run([str(root / ".venv-litellm" / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return exe

"""`shuqi up` as a user runs it: becomes healthy, answers a real chat request with a key made through the
admin API, and leaves no process behind after Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from workers.process import descendants, free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _identity(pid: int) -> tuple[int, str] | None:
    """(start time, command line) of a live process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19]), command  # field 22 of stat, the start time, counted after the command name


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            pytest.fail(f"shuqi up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"shuqi up not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")


def test_up_serves_smollm2_and_leaves_nothing_behind_after_sigint(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHUQI_", "RAY_"))}
    env.update(SHUQI_PORT=str(port), SHUQI_HOST="127.0.0.1", SHUQI_DATA_DIR=str(data_dir), SHUQI_LOGICAL_GPUS="2")
    log = tmp_path / "up.log"
    shuqi = Path(sys.executable).parent / "shuqi"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(shuqi), "up"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(proc, url, log, timeout_s=240)
        token_file = data_dir / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        output = log.read_text()
        assert url in output and str(token_file) in output and "smollm2-135m" in output

        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
        assert admin.post("/admin/v1/startups", json={"id": "acme", "name": "Acme AI"}).status_code == 201
        key = admin.post("/admin/v1/startups/acme/keys", json={"name": "ci"}).json()["key"]
        assert admin.post("/admin/v1/startups/acme/vouchers", json={"kind": "model", "amount": "5"}).status_code == 201

        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert reply.choices[0].message.content and reply.usage is not None
        client.close()
        balance = admin.get("/admin/v1/startups/acme/balance").json()
        assert balance["model"]["spent"] not in ("0", "0.0")
        admin.close()

        started = {pid: _identity(pid) for pid in descendants(proc.pid)}
        commands = " ".join(ident[1] for ident in started.values() if ident)
        assert "workers.llamacpp_server" in commands and "raylet" in commands and "gcs_server" in commands
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    left = {pid: ident for pid, ident in started.items() if ident is not None and _identity(pid) == ident}
    assert left == {}, f"processes left behind: {left}"


_SUBREAPER = """
import ctypes, subprocess, sys, time
from workers.process import descendants
import os
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below us are reparented to us
code = subprocess.call(sys.argv[1:])
time.sleep(1)
print(code, len(descendants(os.getpid())), flush=True)
"""


def test_up_that_cannot_serve_exits_nonzero_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHUQI_", "RAY_"))}
        env.update(SHUQI_PORT=str(port), SHUQI_DATA_DIR=str(tmp_path / "data"))
        shuqi = str(Path(sys.executable).parent / "shuqi")
        # The wrapper adopts anything `shuqi up` leaves behind, so a leftover shows up as its descendant.
        done = subprocess.run(
            [sys.executable, "-c", _SUBREAPER, shuqi, "up"], env=env, capture_output=True, text=True, timeout=300
        )
    code, left = (int(word) for word in done.stdout.split()[-2:])
    assert "could not start" in done.stderr
    assert (code, left) == (1, 0)

"""A Ray node started as `ray start --block` in its own process group, with a scrubbed environment.

Everything Ray starts (the job supervisor, a job's entrypoint, its tasks and actors) inherits the
environment of the raylet that started it, so the process that starts Ray decides what every job
can read. `shuqi up` holds the admin token, the store URL with its password and the gateway's
settings; started from it directly, Ray would hand all of them to every job. Here the node gets
`scrubbed_env(os.environ)` instead: no SHUQI_* setting (but the worker engines' paths), no
REDIS_URL, nothing named like a secret, no URL carrying a password; Ray's own auth variables stay
(a job needs the cluster token to use
Ray at all; what that implies for tenants is in the README's trust model).

The head writes its address to `<temp_dir>/ray_current_cluster`; with Ray's default temp dir that
file makes every plain `ray.init()` on the machine join this cluster, so each node here gets its
own temp dir. Stopping a node ends exactly its process group, never other clusters (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from workers.process import free_port

# Ray's own auth variables: a job needs the cluster token to call Ray, so they are not scrubbed.
RAY_AUTH_VARS = frozenset({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"})
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
_DROPPED = frozenset({"REDIS_URL", "DATABASE_URL"})
# The SHUQI_* settings worker actors read inside Ray (paths, no secret); every other SHUQI_* is dropped,
# so a setting added later stays out of jobs unless it is named here.
SHUQI_PASSED = frozenset({"SHUQI_VLLM_PYTHON", "SHUQI_VLLM_MODELS", "SHUQI_MODELS"})
# scheme://user:password@host: a URL that carries a password, whatever the variable is called.
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][\w+.-]*://[^/@\s]*:[^/@\s]*@")
_PR_SET_PDEATHSIG = 1
_DEFAULT_TOKEN_PATH = Path(".ray") / "auth_token"


def scrubbed_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without shuqi's settings, store URLs or anything that looks like a secret."""
    kept = {}
    for name, value in environ.items():
        if name in RAY_AUTH_VARS or name in SHUQI_PASSED:
            kept[name] = value
            continue
        upper = name.upper()
        if upper.startswith("SHUQI_") or upper in _DROPPED or any(word in upper for word in _SECRET_WORDS):
            continue
        if _URL_WITH_PASSWORD.match(value):
            continue
        kept[name] = value
    return kept


def default_token(home: Path | None = None) -> str:
    """Ray's default cluster token (`~/.ray/auth_token`), created (mode 600) when missing.

    The same file `ray job submit` and a local `ray.init()` use, so a user's own Ray tools reach the
    cluster `shuqi up` starts.
    """
    path = (home or Path.home()) / _DEFAULT_TOKEN_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def new_token() -> str:
    """A fresh random cluster token (for a cluster that must not share the user's default one)."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class NodeSpec:
    """What one Ray node declares: logical GPUs, CPUs, custom resources such as `accelerator_type:T`."""

    num_gpus: int | None = None  # None: Ray detects the GPUs
    num_cpus: int | None = None  # None: Ray counts the cores
    resources: Mapping[str, float] = field(default_factory=dict)
    # Ray's default is 30% of memory per node; several clusters share this machine.
    object_store_bytes: int = 200 * 1024 * 1024


@dataclass(frozen=True)
class ClusterAddress:
    """How to reach a running cluster: the GCS (for `ray.init`), the dashboard (Jobs API), the token."""

    gcs_address: str
    dashboard_url: str
    token: str


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: SIGTERM the node when the thread that forked it dies (`ray start` then tears down)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


def _spec_args(spec: NodeSpec) -> list[str]:
    args = ["--object-store-memory", str(spec.object_store_bytes), "--disable-usage-stats"]
    if spec.num_gpus is not None:
        args += ["--num-gpus", str(spec.num_gpus)]
    if spec.num_cpus is not None:
        args += ["--num-cpus", str(spec.num_cpus)]
    if spec.resources:
        args += ["--resources", json.dumps(dict(spec.resources))]
    # Ray's fixed defaults (52365, 10001) would collide with any other cluster on the machine.
    args += ["--dashboard-agent-listen-port", str(free_port())]
    return args


class RayNodeProcess:
    """One `ray start --block` process, leader of its own process group; `stop` ends the whole group.

    Start it from a thread that lives as long as the node should (the event loop's, not a pool's):
    the node is told to stop when that thread dies.
    """

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self._proc = proc
        self.log_path = log_path

    @classmethod
    def start(cls, args: list[str], *, env: Mapping[str, str], log_path: Path) -> RayNodeProcess:
        """Run `ray start --block ARGS` with exactly `env`; output appended to `log_path`."""
        ray = str(Path(sys.executable).parent / "ray")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [ray, "start", "--block", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> int:
        """SIGTERM `ray start` (it stops its node), SIGKILL the group after `grace_s`; the exit code."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(grace_s)
        self.kill()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once: the node is lost, as when a machine dies."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def log_tail(self, max_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""


def node_env(token: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a node runs with: scrubbed, token auth on, the interpreter's bin dir first on PATH.

    PATH matters because a job's entrypoint is a shell command: `python` must be the interpreter
    that has Ray (`make up` runs `.venv/bin/shuqi` without activating the venv).
    """
    env = scrubbed_env(environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    # Stopping drains for 30 s by default (for Serve on Kubernetes); here stop means stop.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)])
    return env


class RayCluster:
    """A local cluster of `ray start` nodes: one head, any number of extra nodes, each its own group.

    `start` returns at once (it only forks); `wait_ready` blocks until the head is up (call it from a
    worker thread in async code).
    """

    def __init__(self, head: RayNodeProcess, ports: tuple[int, int], *, token: str, temp_dir: Path,
                 log_dir: Path, env: dict[str, str], own_temp_dir: bool) -> None:
        self.head = head
        self._gcs_port, self._dashboard_port = ports
        self.token = token
        self.temp_dir = temp_dir
        self._log_dir = log_dir
        self._env = env
        self._own_temp_dir = own_temp_dir
        self._gcs_host = "127.0.0.1"
        self.nodes: dict[str, RayNodeProcess] = {}  # extra nodes by Ray node id

    @classmethod
    def start(
        cls,
        head: NodeSpec,
        *,
        token: str,
        log_dir: Path,
        environ: Mapping[str, str] | None = None,
        temp_dir: Path | None = None,
    ) -> RayCluster:
        """Fork the head node (its GCS and dashboard on free ports, never 6379; dashboard on loopback)."""
        # Short, under /tmp: Ray's unix socket paths below it must fit in 107 bytes.
        temp = temp_dir or Path(tempfile.mkdtemp(prefix="shuqi-ray-"))
        env = node_env(token, os.environ if environ is None else environ)
        ports = (free_port(), free_port())
        args = [
            "--head", "--port", str(ports[0]),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports[1]),
            "--ray-client-server-port", str(free_port()),
            "--temp-dir", str(temp),
            *_spec_args(head),
        ]  # fmt: skip
        proc = RayNodeProcess.start(args, env=env, log_path=log_dir / "ray-head.log")
        return cls(proc, ports, token=token, temp_dir=temp, log_dir=log_dir, env=env, own_temp_dir=temp_dir is None)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self._dashboard_port}"

    @property
    def address(self) -> ClusterAddress:
        return ClusterAddress(f"{self._gcs_host}:{self._gcs_port}", self.dashboard_url, self.token)

    def _alive_nodes(self, client: httpx.Client) -> list[dict[str, Any]] | None:
        try:
            response = client.get("/api/v0/nodes", params={"detail": "true", "limit": "1000"})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        nodes: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=5)

    def _wait_for_node(self, proc: RayNodeProcess, known: set[str], timeout_s: float) -> str:
        """Poll the dashboard until a node not in `known` is alive; its node id."""
        deadline = time.monotonic() + timeout_s
        with self._client() as client:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"ray start exited with {proc.stop()}:\n{proc.log_tail()}")
                for node in self._alive_nodes(client) or []:
                    if node["node_id"] not in known:
                        if node.get("is_head_node"):
                            self._gcs_host = node["node_ip"]  # the driver finds its raylet by this IP
                        return str(node["node_id"])
                time.sleep(0.25)
        raise TimeoutError(f"Ray node not up after {timeout_s}s:\n{proc.log_tail()}")

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        """Block until the head node is alive and its Jobs API answers; the head's node id."""
        return self._wait_for_node(self.head, set(), timeout_s)

    def add_node(self, spec: NodeSpec, timeout_s: float = 120.0) -> str:
        """Start one more node on this machine and wait until it is alive; its Ray node id."""
        with self._client() as client:
            known = {n["node_id"] for n in self._alive_nodes(client) or []}
        args = ["--address", self.address.gcs_address, "--temp-dir", str(self.temp_dir), *_spec_args(spec)]
        proc = RayNodeProcess.start(args, env=self._env, log_path=self._log_dir / f"ray-node-{len(self.nodes)}.log")
        try:
            node_id = self._wait_for_node(proc, known, timeout_s)
        except BaseException:
            proc.stop(grace_s=1.0)
            raise
        self.nodes[node_id] = proc
        return node_id

    def remove_node(self, node_id: str, *, graceful: bool = False) -> None:
        """End one extra node: SIGKILL by default (a lost machine), or a clean `ray start` shutdown."""
        proc = self.nodes.pop(node_id)
        if graceful:
            proc.stop()
        else:
            proc.kill()

    def stop(self) -> None:
        """Stop every node this cluster started (extra nodes first), then drop its own temp dir."""
        for node_id in list(self.nodes):
            self.remove_node(node_id, graceful=False)
        self.head.stop()
        if self._own_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

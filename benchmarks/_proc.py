"""Processes for the benchmark: start and stop services, wait for ports, read CPU and RSS from /proc.

CPU is read from /proc/<pid>/stat (utime + stime of every live process in the tree, plus what reaped
children left in cutime + cstime), which stays meaningful on a busy machine where wall-clock figures swing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port; RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(c) for c in (task / "children").read_text().split())
    return kids


def tree(pid: int) -> list[int]:
    """The pid and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cpu_ticks(pid: int) -> tuple[int, int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, 0
    # The command name may hold spaces; fields after it are space-separated (utime is field 14).
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + cutime, stime + cstime


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the process tree rooted at pid."""
    ticks = [_cpu_ticks(p) for p in tree(pid)]
    return sum(u for u, _ in ticks) / CLK_TCK, sum(s for _, s in ticks) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process tree rooted at pid."""
    return sum(cpu_split(pid))


def sched_wait_seconds(pid: int) -> float:
    """Seconds the tree's threads spent runnable but waiting for a CPU (/proc/<tid>/schedstat, field 2).

    On a shared machine this is the part of the latency that is other processes' fault.
    """
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of the process tree rooted at pid (sum of VmRSS)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


@dataclass
class Service:
    """A started process (own session, so its whole group can be stopped) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU seconds of this service's process tree."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(p) for p in self.extra_pids)

    def sched_wait_seconds(self) -> float:
        """Seconds this service's threads waited for a CPU while runnable."""
        return sched_wait_seconds(self.pid) + sum(sched_wait_seconds(p) for p in self.extra_pids)

    def rss_bytes(self) -> int:
        """RSS of this service's process tree."""
        return rss_bytes(self.pid) + sum(rss_bytes(p) for p in self.extra_pids)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the timeout."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_s)

    def tail(self, lines: int = 20) -> str:
        """The end of the service's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start(
    name: str, argv: list[str], *, port: int, log_dir: Path, env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (), cwd: Path | None = None, timeout_s: float = 30.0,
) -> Service:
    """Start argv in its own session with output to log_dir/<name>.log and wait until port accepts.

    `env` is added to this process's environment and the names in `unset` are removed from it.
    """
    log = log_dir / f"{name}.log"
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True,
        )
    service = Service(name, proc, port, log)
    try:
        wait_port(port, timeout_s=timeout_s, proc=proc)
    except RuntimeError as exc:
        service.stop()
        raise RuntimeError(f"{name} did not start: {exc}\n{service.tail()}") from exc
    return service

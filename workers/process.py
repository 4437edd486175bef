"""One engine server process: started in its own process group, tied to its parent's life, stopped whole."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (a later bind may still lose a race; the worker then restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that forked it dies.

    libc is resolved before the fork so the child only makes one system call.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


class EngineProcess:
    """A started engine server; `stop` ends its whole process group."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self._proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, argv: list[str], *, env: Mapping[str, str], log_path: Path) -> EngineProcess:
        """Start `argv` with its output appended to `log_path`."""
        log_fd = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **env},
                # A new session makes the engine its own process group leader, so one killpg reaches
                # every process it forks, and Ctrl-C in the terminal reaches only us, who stop it in order.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        finally:
            os.close(log_fd)  # the child holds its own copy
        logger.info("engine started", extra={"pid": proc.pid, "argv0": argv[:3]})
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code."""
        return await self._proc.wait()

    async def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL it after `grace_s`; the exit code."""
        if self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), grace_s)
            except TimeoutError:
                logger.warning("engine ignored SIGTERM for %.1fs; killing", grace_s, extra={"pid": self.pid})
        # Children the engine forked may outlive it; the group still names them.
        self._signal_group(signal.SIGKILL)
        return await self._proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of the engine's log, for reports."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - max_bytes))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name may hold spaces and parentheses; fields resume after the last ')'.
            return stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None and fields[0] != b"Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        children = parents.get(stack.pop(), [])
        found.extend(children)
        stack.extend(children)
    return found


def snapshot_tree(pid: int) -> dict[int, bytes]:
    """The live descendants of `pid` with their start times, to find them again once reparented."""
    found = {}
    for child in descendants(pid):
        fields = _stat(child)
        if fields is not None:
            found[child] = fields[19]  # field 22 of stat: start time, which tells a reused pid apart
    return found


def survivors(snapshot: dict[int, bytes]) -> list[int]:
    """The processes of a snapshot still alive (zombies excluded), wherever they were reparented."""
    alive = []
    for pid, started in snapshot.items():
        fields = _stat(pid)
        if fields is not None and fields[0] != b"Z" and fields[19] == started:
            alive.append(pid)
    return alive


async def finish_tree(snapshot: dict[int, bytes], grace_s: float = 5.0) -> list[int]:
    """Give a snapshot's processes `grace_s` to exit on their own, then SIGKILL the rest; those killed."""
    for _ in range(max(1, int(grace_s / 0.1))):
        if not survivors(snapshot):
            break
        await asyncio.sleep(0.1)
    killed = []
    for pid in survivors(snapshot):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed

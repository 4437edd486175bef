"""Engine processes: stopping one ends its whole group, and one never outlives the process that started it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.process import EngineProcess, descendants, finish_tree, snapshot_tree


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def _wait_until(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_stop_ends_the_engine_and_what_it_forked(tmp_path: Path) -> None:
    # A shell that forks a background child, as an engine with helper processes would.
    proc = await EngineProcess.start(
        ["sh", "-c", "sleep 300 & echo started; wait"], env={}, log_path=tmp_path / "logs" / "engine.log"
    )
    assert await _wait_until(lambda: len(descendants(proc.pid)) == 1)
    grandchild = descendants(proc.pid)[0]

    code = await proc.stop(grace_s=5)

    assert code == -signal.SIGTERM
    assert await _wait_until(lambda: not _alive(grandchild))
    assert "started" in proc.log_tail()


async def test_stop_kills_an_engine_that_ignores_sigterm(tmp_path: Path) -> None:
    proc = await EngineProcess.start(
        ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"], env={}, log_path=tmp_path / "e.log"
    )
    assert await _wait_until(lambda: "ready" in proc.log_tail())
    assert await proc.stop(grace_s=0.5) == -signal.SIGKILL


async def test_engine_gets_its_environment(tmp_path: Path) -> None:
    proc = await EngineProcess.start(
        ["sh", "-c", 'echo "value=$SHUQI_TEST_VAR"'], env={"SHUQI_TEST_VAR": "42"}, log_path=tmp_path / "e.log"
    )
    assert await proc.wait() == 0
    assert "value=42" in proc.log_tail()


_PARENT = """
import asyncio, sys
from pathlib import Path
from workers.process import EngineProcess

async def main():
    proc = await EngineProcess.start(["sleep", "300"], env={}, log_path=Path(sys.argv[1]))
    print(proc.pid, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def _wait_until_sync(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_engine_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", _PARENT, str(tmp_path / "e.log")]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    engine_pid = int(parent.stdout.readline())
    parent.stdout.close()
    assert _alive(engine_pid)

    parent.send_signal(signal.SIGKILL)  # no chance to clean up: only PR_SET_PDEATHSIG can end the engine
    parent.wait()

    assert _wait_until_sync(lambda: not _alive(engine_pid))


async def test_finish_tree_sweeps_leftovers_even_once_reparented() -> None:
    # Only a subtree this test owns: sweeping the test process's own tree would kill the session's Ray.
    shell = await asyncio.create_subprocess_exec("sh", "-c", "sleep 300 & wait")
    assert await _wait_until(lambda: len(descendants(shell.pid)) == 1)
    tree = snapshot_tree(shell.pid)
    [sleeper] = tree
    shell.kill()  # the sleeper is reparented and no longer below the shell
    await shell.wait()
    assert await finish_tree(tree, grace_s=0.2) == [sleeper]
    assert _wait_until_sync(lambda: not _alive(sleeper))

"""Where a proxy's CPU goes: py-spy samples the process under load; collapsed stacks are summarised.

Self time says which functions burn the CPU; inclusive time says which call paths (auth, metering,
relay, the framework) the burn belongs to.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any


def record(py_spy: Path, pid: int, seconds: float, out: Path, *, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start py-spy recording pid for `seconds` into `out` (collapsed stacks); the caller waits on it."""
    argv = [
        str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
        "--format", "raw", "--output", str(out), "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


PROJECT = ("gateway", "vouchers", "shuqi", "workers", "scheduler")

# Phases of a gateway request, by the functions that run them. A sample belongs to the deepest frame
# that matches; other samples (the server, the framework, the event loop) are grouped by package.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("auth (key lookup)", ("startup_caller (gateway/auth.py",)),
    ("body read and validation", ("read_body (gateway/", "parse (gateway/validation.py")),
    ("routing and price/limit lookups", ("replicas_for (gateway/", "Lookups.")),
    ("rate limit", ("check (gateway/ratelimit.py",)),
    ("reserve (hold)", ("_reserve (gateway/openai_api.py",)),
    ("settle or release", ("Exchange._settle", "Exchange._release")),
    ("metrics", ("Exchange._observe", "(prometheus_client/")),
    ("upstream request and answer", ("Exchange._connect", "Exchange._first_bytes", "Exchange._unary")),
    ("stream relay", ("Exchange._relay",)),
    ("background loops", ("_every (gateway/app.py",)),
    ("ledger script batches (Redis pipe task)", ("ScriptRunner._flush",)),
    ("handler, other", ("_serve (gateway/",)),
)


def _parse(frame: str) -> tuple[str, str]:
    """(function (file), package) from a py-spy raw frame such as `pick (gateway/routing.py:21)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})", path.split("/", 1)[0] if "/" in path else path


def _phase(frames: list[tuple[str, str]]) -> str:
    for fn, _ in reversed(frames):
        for label, markers in PHASES:
            if any(m in fn for m in markers):
                return label
    return f"outside the handler: {frames[-1][1]}"


def summarise(collapsed: Path, *, top: int = 25) -> dict[str, Any]:
    """Shares of the samples: by function (self), by package (self) and by project function (inclusive)."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    project: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_parse(f) for f in stack.split(";") if f]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        self_fn[frames[-1][0]] += count
        self_pkg[frames[-1][1]] += count
        for name in {fn for fn, pkg in frames if pkg in PROJECT}:
            project[name] += count
        phases[_phase(frames)] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        return [{key: f, "share": round(c / total, 4)} for f, c in counter.most_common(top)]

    return {
        "samples": total,
        "by_phase": share(phases, "phase"),
        "self_by_package": share(self_pkg, "package"),
        "self_by_function": share(self_fn, "function"),
        "project_inclusive": share(project, "function"),
    }

"""Drive load with wrk (Debian package): a Lua script sets the POST body and headers and prints JSON."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_MARK = "WRKJSON "

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    "MARK", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests: int
    seconds: float
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def lua_script(body: str, headers: dict[str, str], *, delay_ms: int = 0) -> str:
    """A wrk script that POSTs `body` with `headers` and prints the summary as one JSON line.

    `delay_ms`: each connection waits this long after an answer before its next request (wrk's `delay`).
    """
    if "]==]" in body:
        raise ValueError("body may not contain ]==]")
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if delay_ms:
        lines.append(f"delay = function() return {int(delay_ms)} end")
    return "\n".join(lines) + _DONE.replace('"MARK"', json.dumps(_MARK))


def run(
    url: str, body: str, headers: dict[str, str], *, connections: int, seconds: float,
    on_tick: Callable[[], None] | None = None, timeout_s: float = 30.0, delay_ms: int = 0,
) -> WrkResult:
    """Run wrk against url for `seconds`; on_tick is called about every 0.25 s while it runs."""
    with tempfile.TemporaryDirectory(prefix="shuqi-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua_script(body, headers, delay_ms=delay_ms))
        script.chmod(0o600)
        argv = [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={int(timeout_s)}s",
            "--latency", "-s", str(script), url,
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            if on_tick is not None:
                on_tick()
            time.sleep(0.25)
        out, err = proc.communicate()
    return _parse(out, err, proc.returncode)


def _parse(out: str, err: str, returncode: int) -> WrkResult:
    for line in out.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK) :])
            break
    else:
        raise RuntimeError(f"wrk gave no summary (exit {returncode}): {err.strip() or out.strip()}")
    lat = data["latency_us"]
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=seconds,
        errors=sum(data["errors"].values()),
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000,
        max_ms=lat["max"] / 1000,
    )

"""Gateway benchmark: the same load direct to a fake upstream, through shuqi, LiteLLM's proxy and nginx.

For each path, non-streaming and streaming requests at each concurrency are driven by wrk (its own
process) after a warm-up; CPU per request of each proxy's process tree comes from /proc, time to first
byte from a raw-socket client in its own process, and the per-chunk relay cost from the proxy CPU of
streams of two lengths (the fixed per-request cost cancels out). Targets are interleaved per load, so
the noise of a shared machine hits every path alike.

    .venv/bin/python benchmarks/gateway.py --json > benchmarks/results/gateway.json
    .venv/bin/python benchmarks/gateway.py --table benchmarks/results/gateway.json   # the README table

It installs wrk and nginx (apt-get, as root) and LiteLLM (`.venv-litellm`) when they are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _profile
import _targets
import _ttfb
import _wrk
from _install import ensure_debian_tools, nginx_binary, py_spy
from _proc import Service, cpu_split
from _report import derive, table

CASES = ("direct", "shuqi", "nginx", "litellm")
MODES = ("nonstream", "stream")
log = logging.getLogger("benchmarks.gateway")


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup: float
    concurrency: tuple[int, ...]
    cases: tuple[str, ...]
    chunks: int
    chunk_pair: tuple[int, int]
    ttfb_requests: int
    pace_ms: int = 4  # the paced c=8 load: each connection waits this long between requests
    rounds: int = 3  # each main load is run this many times, interleaved; figures are the median round's


def body(*, stream: bool, chunks: int, interval_ms: float = 0.0) -> str:
    """The request every path gets; on a stream `max_tokens` sets how many chunks the fake sends.

    `interval_ms` paces the fake's chunks (a field every proxy passes through), as a model emits tokens.
    """
    payload: dict[str, Any] = {
        "model": _targets.MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": chunks,
    }
    if interval_ms:
        payload["x_chunk_interval_ms"] = interval_ms
    if stream:
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(payload)


def _served(upstream: Service) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{upstream.port}/stats", timeout=10) as resp:
        return int(json.loads(resp.read())["served"])


def quiesce(service: Service, *, max_s: float = 90.0, idle_share: float = 0.1) -> None:
    """Wait until the service uses under idle_share of a core: requests a client gave up on are finished."""
    deadline = time.monotonic() + max_s
    before = service.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = service.cpu_seconds()
        if now - before < 0.5 * idle_share:
            return
        before = now
    log.warning("%s still busy after %.0f s", service.name, max_s)


class _Meter:
    """CPU of the proxy, the upstream and helpers over a run and its drain; requests the upstream served."""

    def __init__(self, target: _targets.Target, upstream: Service) -> None:
        self.target, self.upstream = target, upstream
        self.peak_rss = 0
        self._measured = target.proxy or upstream
        quiesce(self._measured)
        self._served = _served(upstream)
        self._start = self._cpu()
        self._wait_start = self._measured.sched_wait_seconds()
        self._sys_start = cpu_split(self._measured.pid)[1]
        self._since = time.time()

    def _cpu(self) -> tuple[float, float, float]:
        proxy = self.target.proxy.cpu_seconds() if self.target.proxy else 0.0
        helpers = sum(h.cpu_seconds() for h in self.target.helpers)
        return proxy, self.upstream.cpu_seconds(), helpers

    def tick(self) -> None:
        """Sample RSS while the load runs."""
        self.peak_rss = max(self.peak_rss, self._measured.rss_bytes())

    def per_request_ms(self) -> dict[str, float | int | None]:
        """After the load: wait for the drain, then CPU per request the upstream served."""
        quiesce(self._measured)
        end = self._cpu()
        served = _served(self.upstream) - self._served
        n = max(served, 1)
        wait = (self._measured.sched_wait_seconds() - self._wait_start) * 1000 / n
        system = (cpu_split(self._measured.pid)[1] - self._sys_start) * 1000 / n
        # Only shuqi has a ledger: one journal line per charged request.
        charged = _targets.charges(self.target, self._since, time.time()) if self.target.name == "shuqi" else None
        proxy, upstream, helpers = ((e - s) * 1000 / n for e, s in zip(end, self._start, strict=True))
        return {
            "upstream_served": served,
            "requests_metered": charged,
            "proxy_cpu_ms_per_req": proxy if self.target.proxy else None,
            "upstream_cpu_ms_per_req": upstream,
            "helper_cpu_ms_per_req": helpers if self.target.helpers else None,
            "system_cpu_ms_per_req": system,  # of the measured process: kernel time, mostly socket calls
            "runq_wait_ms_per_req": wait,
        }


def load(target: _targets.Target, upstream: Service, payload: str, connections: int, opts: Options, *,
         delay_ms: int = 0) -> dict[str, Any]:
    """Warm up, then one measured wrk run: req/s, latency percentiles, CPU per request, peak RSS."""
    if opts.warmup > 0:
        _wrk.run(target.url, payload, target.headers, connections=connections, seconds=opts.warmup,
                 delay_ms=delay_ms)
    meter = _Meter(target, upstream)
    meter.tick()
    result = _wrk.run(target.url, payload, target.headers, connections=connections, seconds=opts.seconds,
                      on_tick=meter.tick, delay_ms=delay_ms)
    loadavg = os.getloadavg()[0]
    return {
        "requests": result.requests,
        "errors": result.errors,
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "mean_ms": round(result.mean_ms, 3),
        **{k: _round(v) for k, v in meter.per_request_ms().items()},
        "rss_mb_peak": round(meter.peak_rss / 2**20, 1),
        "loadavg_1m": round(loadavg, 2),
    }


_COUNTS = ("requests", "errors", "upstream_served", "requests_metered")  # summed over rounds, not medians


def median_run(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One load over its rounds: each rate, latency and cost is its median round's, each count the total.

    The rounds themselves are kept under `rounds`.
    """
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = sorted(r[key] for r in rounds if r.get(key) is not None)
        if key in _COUNTS:
            out[key] = sum(values) if len(values) == len(rounds) else None
        else:
            out[key] = values[len(values) // 2] if values else None
    if len(rounds) > 1:
        out["rounds"] = rounds
    return out


def per_chunk(target: _targets.Target, upstream: Service, opts: Options) -> dict[str, Any]:
    """CPU per request of streams of two lengths at concurrency 8; the slope is the per-chunk relay cost."""
    short, long_ = opts.chunk_pair
    key = "proxy_cpu_ms_per_req" if target.proxy else "upstream_cpu_ms_per_req"
    out: dict[str, Any] = {"chunks": [short, long_], "measured": "proxy" if target.proxy else "upstream"}
    # Back to back, chunks reach the proxy in a few reads; paced 1 ms apart, each one costs a wake-up,
    # a read and a write, as with a real model.
    for label, interval in (("", 0.0), ("_paced", 1.0)):
        runs = {n: load(target, upstream, body(stream=True, chunks=n, interval_ms=interval), 8, opts)
                for n in (short, long_)}
        slope = (runs[long_][key] - runs[short][key]) * 1000 / (long_ - short)
        out[f"cpu_ms_per_req{label}"] = [runs[short][key], runs[long_][key]]
        out[f"rps{label}"] = [runs[short]["rps"], runs[long_]["rps"]]
        out[f"relay_cpu_us_per_chunk{label}"] = round(slope, 2)
    return out


def ttfb(target: _targets.Target, opts: Options) -> dict[str, Any]:
    """First byte and first event at concurrency 1 from a client in its own process, both modes."""
    n = opts.ttfb_requests if target.name != "litellm" else max(20, opts.ttfb_requests // 10)
    return {
        mode: _ttfb.measure(target.url, body(stream=mode == "stream", chunks=opts.chunks), target.headers,
                            n=n, warmup=max(5, n // 10))
        for mode in MODES
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@contextlib.contextmanager
def running(opts: Options, work: Path) -> Iterator[tuple[Service, dict[str, _targets.Target]]]:
    """The fake upstream and every requested target, stopped at the end whatever happens."""
    upstream = _targets.start_upstream(work, chunks=opts.chunks)
    targets: dict[str, _targets.Target] = {}
    starters = {"shuqi": _targets.start_shuqi, "nginx": _targets.start_nginx, "litellm": _targets.start_litellm}
    try:
        for name in opts.cases:
            log.info("starting %s", name)
            targets[name] = _targets.direct(upstream) if name == "direct" else starters[name](upstream, work)
        yield upstream, targets
    finally:
        for target in targets.values():
            target.stop()
        upstream.stop()


def measure(opts: Options, work: Path) -> dict[str, Any]:
    """Run every load on every target (interleaved) and return the raw figures per case."""
    with running(opts, work) as (upstream, targets):
        cases: dict[str, dict[str, Any]] = {name: {"loads": {m: {} for m in MODES}} for name in targets}
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        # Whole rounds, each over every load and target: a slow spell of the machine lands in one round
        # of every path rather than in every round of one.
        for round_no in range(1, opts.rounds + 1):
            for mode in MODES:
                payload = body(stream=mode == "stream", chunks=opts.chunks)
                for c in opts.concurrency:
                    for name, target in targets.items():
                        log.info("round %d/%d: %s %s c=%d", round_no, opts.rounds, name, mode, c)
                        runs.setdefault((name, mode, c), []).append(load(target, upstream, payload, c, opts))
        for (name, mode, c), rounds in runs.items():
            cases[name]["loads"][mode][str(c)] = median_run(rounds)
        if opts.pace_ms:
            # The same 8 connections below saturation: latency added per request rather than queueing.
            payload = body(stream=False, chunks=opts.chunks)
            for name, target in targets.items():
                log.info("%s nonstream c=8 paced %d ms", name, opts.pace_ms)
                cases[name]["paced8"] = load(target, upstream, payload, 8, opts, delay_ms=opts.pace_ms)
        for name, target in targets.items():
            log.info("%s: time to first byte and per-chunk relay cost", name)
            cases[name]["ttfb"] = ttfb(target, opts)
            cases[name]["per_chunk"] = per_chunk(target, upstream, opts)
            peaks = [r["rss_mb_peak"] for m in MODES for r in cases[name]["loads"][m].values()]
            cases[name]["rss_mb_peak"] = max(peaks, default=None)
            if name == "shuqi":
                cases[name]["metered"] = _targets.metered(target)
                cases[name]["launcher"] = target.info["launcher"]
        return cases


def profile(opts: Options, work: Path, seconds: float, out_dir: Path, connections: int) -> dict[str, Any]:
    """py-spy on shuqi's gateway under non-streaming and streaming load; summaries per mode."""
    spy = py_spy(_targets.ROOT)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    with running(dataclasses.replace(opts, cases=("shuqi",)), work) as (_, targets):
        shuqi = targets["shuqi"]
        if shuqi.proxy is None:
            raise RuntimeError("shuqi has no gateway process to profile")
        for mode in MODES:
            payload = body(stream=mode == "stream", chunks=opts.chunks)
            _wrk.run(shuqi.url, payload, shuqi.headers, connections=connections, seconds=max(opts.warmup, 1))
            collapsed = out_dir / f"shuqi-profile-{mode}.txt"
            spy_proc = _profile.record(spy, shuqi.proxy.pid, seconds, collapsed)
            _wrk.run(shuqi.url, payload, shuqi.headers, connections=connections, seconds=seconds + 1)
            _, err = spy_proc.communicate(timeout=60)
            if spy_proc.returncode != 0 or not collapsed.exists():
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            summaries[mode] = {"file": _display(collapsed), **_profile.summarise(collapsed)}
    return summaries


def _display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(_targets.ROOT)) if resolved.is_relative_to(_targets.ROOT) else str(resolved)


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    return "unknown"


def meta(opts: Options) -> dict[str, Any]:
    """Where and how the figures were measured."""
    litellm = _targets.ROOT / ".venv-litellm" / "bin" / "python"
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": _cpus(), "python": platform.python_version(), "kernel": platform.release()},
        "seconds": opts.seconds,
        "rounds": opts.rounds,
        "warmup_s": opts.warmup,
        "concurrency": list(opts.concurrency),
        "stream_chunks": opts.chunks,
        "chunk_pair": list(opts.chunk_pair),
        "pace_ms": opts.pace_ms,
        "load_generator": _version(["wrk", "-v"]),
        "shuqi_commit": _version(["git", "-C", str(_targets.ROOT), "describe", "--always", "--dirty"]),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "nginx": _version([nginx_binary() or "nginx", "-v"]) if "nginx" in opts.cases else None,
        "litellm": _version([str(litellm), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        if "litellm" in opts.cases else None,
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Options]:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the full result as one JSON object")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per load and round (default 6)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of the main loads; each figure is its median over the rounds (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each load (default 2)")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated connection counts")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out (it takes minutes to install)")
    p.add_argument("--chunks", type=int, default=19, help="content chunks per streamed response (default 19)")
    p.add_argument("--chunk-pair", default="5,50", help="stream lengths compared for the per-chunk cost")
    p.add_argument("--ttfb-requests", type=int, default=300, help="sequential requests timed for first byte")
    p.add_argument("--pace-ms", type=int, default=4,
                   help="the extra c=8 load: each connection waits this long between requests (0: skip it)")
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    p.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                   help="also profile shuqi's gateway with py-spy for this long per mode (writes collapsed stacks)")
    p.add_argument("--profile-concurrency", type=int, default=8, help="connections while profiling (default 8)")
    p.add_argument("--profile-dir", type=Path, default=_targets.BENCH_DIR / "out",
                   help="where the collapsed stacks go (default benchmarks/out, not committed)")
    p.add_argument("--table", type=Path, metavar="JSON", help="print the markdown table of a saved result and exit")
    args = p.parse_args(argv)
    cases = tuple(c for c in args.cases.split(",") if c and not (args.skip_litellm and c == "litellm"))
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    short, long_ = (int(x) for x in args.chunk_pair.split(","))
    opts = Options(
        seconds=args.seconds, warmup=args.warmup, concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        cases=cases, chunks=args.chunks, chunk_pair=(short, long_), ttfb_requests=args.ttfb_requests,
        pace_ms=args.pace_ms, rounds=max(1, args.rounds),
    )
    return args, opts


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON (--json) or a markdown table."""
    args, opts = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    ensure_debian_tools(nginx="nginx" in opts.cases)
    with tempfile.TemporaryDirectory(prefix="shuqi-bench-") as tmp:
        cases = measure(opts, Path(tmp)) if opts.cases else {}
        profiled = (profile(opts, Path(tmp), args.profile, args.profile_dir, args.profile_concurrency)
                    if args.profile > 0 else None)
    result: dict[str, Any] = {"meta": meta(opts), "cases": cases}
    result |= derive(cases)
    if profiled is not None:
        result["profile"] = profiled
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json or not cases else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

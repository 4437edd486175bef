"""Figures derived from the raw benchmark result, the targets shuqi is held to, and the markdown table."""

from __future__ import annotations

from typing import Any

MODES = ("nonstream", "stream")
PROXIES = ("shuqi", "nginx", "litellm")


def _load(cases: dict[str, Any], name: str, mode: str, c: str) -> dict[str, Any] | None:
    loads: dict[str, Any] | None = cases.get(name, {}).get("loads", {}).get(mode)
    return None if loads is None else loads.get(c)


def _overheads(cases: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for proxy in (p for p in PROXIES if p in cases and "direct" in cases):
        per: dict[str, Any] = {}
        for mode, loads in cases[proxy]["loads"].items():
            for c, run in loads.items():
                base = _load(cases, "direct", mode, c)
                if base:
                    per.setdefault(mode, {})[c] = {
                        k: round(run[f"{k}_ms"] - base[f"{k}_ms"], 3) for k in ("p50", "p99", "mean")
                    }
        out[proxy] = per
    return out


def _paced_overheads(cases: dict[str, Any]) -> dict[str, Any]:
    """p50 and p99 added at 8 paced connections (below saturation), per proxy."""
    base = cases.get("direct", {}).get("paced8")
    if not base:
        return {}
    return {
        proxy: {k: round(cases[proxy]["paced8"][f"{k}_ms"] - base[f"{k}_ms"], 3) for k in ("p50", "p99", "mean")}
        for proxy in PROXIES
        if cases.get(proxy, {}).get("paced8")
    }


def _ratios(cases: dict[str, Any], other: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "shuqi" not in cases or other not in cases:
        return out
    for mode, loads in cases["shuqi"]["loads"].items():
        for c, run in loads.items():
            theirs = _load(cases, other, mode, c)
            if theirs and theirs["rps"]:
                out.setdefault(mode, {})[c] = round(run["rps"] / theirs["rps"], 2)
    return out


def _ttfb_added(cases: dict[str, Any]) -> dict[str, Any]:
    if "direct" not in cases:
        return {}
    base = cases["direct"]["ttfb"]
    return {
        proxy: {
            "stream_first_byte_p50": round(cases[proxy]["ttfb"]["stream"]["first_byte_p50_ms"]
                                           - base["stream"]["first_byte_p50_ms"], 3),
            "stream_first_event_p50": round(cases[proxy]["ttfb"]["stream"]["first_event_p50_ms"]
                                            - base["stream"]["first_event_p50_ms"], 3),
            "nonstream_total_p50": round(cases[proxy]["ttfb"]["nonstream"]["total_p50_ms"]
                                         - base["nonstream"]["total_p50_ms"], 3),
        }
        for proxy in PROXIES
        if proxy in cases
    }


def _check(name: str, value: float | None, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"target": name, "value": value, "limit": limit, "met": met}


def _targets(cases: dict[str, Any], derived: dict[str, Any]) -> list[dict[str, Any]]:
    if "shuqi" not in cases:
        return []
    shuqi = cases["shuqi"]
    over = derived["overhead_ms"].get("shuqi", {}).get("nonstream", {})
    cpu = [r["proxy_cpu_ms_per_req"] for r in shuqi["loads"]["nonstream"].values()]
    p99 = [over[c]["p99"] for c in ("1", "8") if c in over]
    lite = [v for m in derived["ratio_shuqi_litellm"].values() for v in m.values()]
    runs = [r for m in MODES for r in shuqi["loads"][m].values()]
    served = sum(r["upstream_served"] for r in runs)
    charged = sum(r["requests_metered"] or 0 for r in runs)
    return [
        _check("CPU per request, non-streaming, worst concurrency (ms)", max(cpu, default=None), 1.0),
        _check("overhead p50 at c=1 (ms)", over.get("1", {}).get("p50"), 1.0),
        _check("overhead p50 at c=8 (ms)", over.get("8", {}).get("p50"), 1.5),
        _check("overhead p99 at c=1 and c=8, worst (ms)", max(p99, default=None), 10.0),
        _check("time to first event on a stream, added p50 (ms)",
               derived["ttfb_added_ms"].get("shuqi", {}).get("stream_first_event_p50"), 1.0),
        _check("per-chunk relay CPU, chunks back to back (µs)", shuqi["per_chunk"]["relay_cpu_us_per_chunk"], 50.0),
        _check("per-chunk relay CPU, chunks 1 ms apart (µs)",
               shuqi["per_chunk"].get("relay_cpu_us_per_chunk_paced"), 50.0),
        _check("throughput vs LiteLLM, worst load (×)", min(lite, default=None), 20.0, at_least=True),
        _check("gateway RSS under load (MB)", shuqi.get("rss_mb_peak"), 150.0),
        _check("requests charged in the ledger / requests forwarded", round(charged / served, 4) if served else None,
               1.0, at_least=True),
    ]


def derive(cases: dict[str, Any]) -> dict[str, Any]:
    """Overheads against direct, throughput ratios, added time to first byte and the target checks."""
    derived: dict[str, Any] = {
        "overhead_ms": _overheads(cases),
        "overhead_ms_paced8": _paced_overheads(cases),
        "ratio_shuqi_litellm": _ratios(cases, "litellm"),
        "ratio_shuqi_nginx": _ratios(cases, "nginx"),
        "ttfb_added_ms": _ttfb_added(cases),
    }
    derived["targets"] = _targets(cases, derived)
    return derived


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def _row(name: str, case: dict[str, Any], conc: list[str]) -> str:
    ns, st = case["loads"]["nonstream"], case["loads"]["stream"]
    cpu_key = "proxy_cpu_ms_per_req" if name != "direct" else "upstream_cpu_ms_per_req"
    mid = "8" if "8" in ns else conc[0]
    cells = [
        name,
        " / ".join(_fmt(ns[c]["rps"], 0) for c in conc),
        _fmt(ns[conc[0]]["p50_ms"]),
        _fmt(ns[mid]["p99_ms"]),
        " / ".join(_fmt(ns[c][cpu_key], 3) for c in conc),
        _fmt(st[mid]["rps"], 0),
        _fmt(st[mid][cpu_key], 3),
        _fmt(case["ttfb"]["stream"]["first_event_p50_ms"]),
        _fmt(case["per_chunk"]["relay_cpu_us_per_chunk"], 1)
        + " / " + _fmt(case["per_chunk"].get("relay_cpu_us_per_chunk_paced"), 1),
        _fmt(case.get("rss_mb_peak"), 0),
    ]
    return "| " + " | ".join(cells) + " |"


def table(result: dict[str, Any]) -> str:
    """The markdown tables the README shows."""
    cases, meta = result["cases"], result["meta"]
    conc = [str(c) for c in meta["concurrency"]]
    mid = "8" if "8" in conc else conc[0]
    cs = "/".join(conc)
    head = (
        f"| path | req/s c={cs} | p50 c={conc[0]} (ms) | p99 c={mid} (ms) | CPU/req (ms) c={cs} "
        f"| stream req/s c={mid} | stream CPU/req (ms) | first event (ms) | CPU/chunk (µs) packed / paced | RSS (MB) |"
    )
    lines = [head, "|" + " --- |" * 10]
    lines += [_row(name, case, conc) for name, case in cases.items()]
    lines += ["", "| shuqi target | measured | limit | met |", "| --- | --- | --- | --- |"]
    for t in result.get("targets", []):
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['limit'])} | {met} |")
    lines += _paced_lines(result)
    lines += _profile_lines(result.get("profile") or {})
    return "\n".join(lines)


def _paced_lines(result: dict[str, Any]) -> list[str]:
    cases, added = result["cases"], result.get("overhead_ms_paced8") or {}
    paced = {name: case["paced8"] for name, case in cases.items() if case.get("paced8")}
    if not paced:
        return []
    pace = result["meta"].get("pace_ms")
    lines = ["", f"| 8 connections, each waiting {pace} ms between requests | req/s | p50 (ms) | p99 (ms) "
             "| p50 added (ms) | CPU/req (ms) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, run in paced.items():
        cpu = run["proxy_cpu_ms_per_req"] if name != "direct" else run["upstream_cpu_ms_per_req"]
        lines.append(f"| {name} | {_fmt(run['rps'], 0)} | {_fmt(run['p50_ms'])} | {_fmt(run['p99_ms'])} "
                     f"| {_fmt(added.get(name, {}).get('p50'))} | {_fmt(cpu, 3)} |")
    return lines


def _profile_lines(profile: dict[str, Any], top: int = 8) -> list[str]:
    if not profile:
        return []
    modes = [m for m in MODES if profile.get(m, {}).get("samples")]
    lines = ["", "| where shuqi's gateway spends its time (py-spy, c=8) | " + " | ".join(modes) + " |",
             "| --- |" + " --- |" * len(modes)]
    shares = {m: {p["phase"]: p["share"] for p in profile[m].get("by_phase", [])} for m in modes}
    ranked = sorted({k for m in modes for k in shares[m]}, key=lambda k: -max(shares[m].get(k, 0) for m in modes))
    for phase in ranked[:top]:
        lines.append(f"| {phase} | " + " | ".join(f"{shares[m].get(phase, 0):.0%}" for m in modes) + " |")
    return lines

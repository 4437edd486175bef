"""Time to first byte and first event, measured by a raw-socket HTTP/1.1 client in its own process.

One keep-alive connection sends the same POST n times in a row (concurrency 1) and times, for each
request, the first response byte, the first body byte (the first SSE event on a stream) and the end.
Run as a script it prints one JSON object; `measure` runs it as a subprocess so the client's CPU never
competes inside the benchmark process.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


class _Conn:
    """A blocking keep-alive connection with a read buffer."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.fill()
        head, _, self.buf = self.buf.partition(b"\r\n")
        return head

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _one(conn: _Conn, request: bytes) -> tuple[float, float, float, int, int, bool]:
    """Send one request; (first byte s, first body byte s, total s, status, events, keep-alive)."""
    t0 = time.perf_counter()
    conn.sock.sendall(request)
    conn.fill()
    t_first = time.perf_counter() - t0
    status = int(conn.line().split()[1])
    headers: dict[str, str] = {}
    while line := conn.line():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body, t_body = _body(conn, headers, t0)
    total = time.perf_counter() - t0
    keep = headers.get("connection", "").lower() != "close"
    return t_first, t_body, total, status, body.count(b"data:"), keep


def _body(conn: _Conn, headers: dict[str, str], t0: float) -> tuple[bytes, float]:
    if "chunked" in headers.get("transfer-encoding", ""):
        parts, t_body = [], 0.0
        while size := int(conn.line().split(b";")[0], 16):
            parts.append(conn.take(size))
            if not t_body:
                t_body = time.perf_counter() - t0
            conn.line()
        while conn.line():  # trailers end with an empty line
            pass
        return b"".join(parts), t_body
    length = int(headers.get("content-length", "0"))
    body = conn.take(length)
    return body, time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(url: str, body: str, headers: dict[str, str], n: int, warmup: int) -> dict[str, float | int]:
    """Time n sequential requests after `warmup` untimed ones; milliseconds, medians and p99."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body.encode())}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body.encode()
    conn = _Conn(host, port)
    first, first_body, total, events, bad = [], [], [], [], 0
    for i in range(warmup + n):
        t_first, t_body, t_total, status, count, keep = _one(conn, request)
        if i >= warmup:
            first.append(t_first * 1000)
            first_body.append(t_body * 1000)
            total.append(t_total * 1000)
            events.append(count)
            bad += status != 200
        if not keep:
            conn.sock.close()
            conn = _Conn(host, port)
    conn.sock.close()
    return {
        "n": n,
        "non_200": bad,
        "events_per_response": statistics.median(events),
        "first_byte_p50_ms": statistics.median(first),
        "first_byte_p99_ms": _pct(first, 0.99),
        "first_event_p50_ms": statistics.median(first_body),
        "first_event_p99_ms": _pct(first_body, 0.99),
        "total_p50_ms": statistics.median(total),
        "total_p99_ms": _pct(total, 0.99),
    }


def measure(url: str, body: str, headers: dict[str, str], *, n: int, warmup: int) -> dict[str, float | int]:
    """Run the client in its own process and return its JSON result."""
    spec = json.dumps({"url": url, "body": body, "headers": headers, "n": n, "warmup": warmup})
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "--spec-stdin"], input=spec, capture_output=True, text=True,
        check=True, timeout=600,
    )
    result: dict[str, float | int] = json.loads(out.stdout)
    return result


def main() -> None:
    """Read the run's spec as JSON on stdin; print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec-stdin", action="store_true", required=True)
    parser.parse_args()
    spec = json.load(sys.stdin)
    print(json.dumps(run(spec["url"], spec["body"], spec["headers"], spec["n"], spec["warmup"])))


if __name__ == "__main__":
    main()

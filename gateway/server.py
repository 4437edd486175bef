"""How the gateway is served: uvicorn with httptools, with a response's head and body sent together.

uvicorn writes a response's status line and headers as soon as the app sends them, then the body in a
second write: two socket sends, and two wake-ups of the client, for every unary answer. Sends cost more
CPU than anything else per request here, so each connection's transport holds the head back until the
body (or a stream's first event) follows and sends both at once.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport that sends a response's head together with what follows it.

    A write that starts a response (uvicorn writes the status line and headers on their own) is held back
    until the next write, then both go in one send; if no write follows in the same event-loop turn (an
    answer without a body), it goes at the end of that turn. Every other write goes straight through:
    a streamed event must not wait, and the relay already joins what arrived together into one write.
    Everything else is the real transport's. Closing sends what is pending first; aborting drops it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        pending = self._pending
        if pending is not None:
            self._pending = None
            data = pending + data
        elif data[:7] == b"HTTP/1.":
            self._pending = bytes(data)
            self._loop.call_soon(self._flush)
            return
        if not self._transport.is_closing():
            self._transport.write(data)

    def _flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._pending or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str = "info", **options: Any) -> uvicorn.Config:
    """The uvicorn settings the gateway runs with, wherever it runs (its own command, `shuqi up`, tests)."""
    # No access log: a line per request costs more CPU than the gateway's own work; /metrics counts requests.
    # No X-Forwarded-* rewriting: nothing here reads the client's address, and it costs a layer per request.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=GatewayHttpProtocol, ws="none",
                          access_log=False, proxy_headers=False, **options)


def tune_gc() -> None:
    """Set the collector for a long-running server: call once everything is imported and built.

    What exists by then (some 60,000 objects of the imported libraries) lives as long as the process:
    frozen, the collector no longer walks it on every full collection (tens of milliseconds each here).
    A larger first generation runs the young collections ten times less often, each over objects that
    mostly died with their request. Measured here: about 4 % less CPU per request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)

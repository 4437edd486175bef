"""How the gateway is served: uvicorn with httptools, with a response's head and body sent together.

uvicorn writes a response's status line and headers as soon as the app sends them, then the body in a
second write: two socket sends, and two wake-ups of the client, for every unary answer. Sends cost more
CPU than anything else per request here, so each connection's transport holds the head back until the
body (or a stream's first event) follows and sends both at once.

The metered POSTs (the app's `hot_paths`) also skip the ASGI layers: their handler runs straight from
the parser's callbacks and a whole answer leaves in one write. Those layers (the scope's round trips
through the app, two `send` messages, the response object's own sending) cost about a tenth of the
gateway's CPU per request. Everything else, streams included, goes through uvicorn's ASGI cycle as usual.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

Handler = Callable[[Request], Awaitable[Response]]


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

    def write_whole(self, data: bytes) -> None:
        """A whole response (head and body): straight out, after anything still pending."""
        self._flush()
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


class HotCycle(RequestResponseCycle):
    """One metered POST: its handler runs without the ASGI app around it; a plain answer is one write.

    It is uvicorn's cycle in every other respect (body, disconnect, keep-alive, flow control), so the
    protocol's own bookkeeping and a streamed answer's ASGI `send` work on it unchanged.
    """

    async def run_hot(self, app: Any, handler: Handler) -> None:
        scope: Any = self.scope
        scope["app"] = app
        receive: Any = self.receive
        try:
            response = await app.answer(handler, Request(scope, receive))
            if type(response) is Response and not self.flow.write_paused:
                self._send_whole(response)
            else:
                await response(scope, self.receive, self.send)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        finally:
            self.on_response = lambda: None

    def _send_whole(self, response: Response) -> None:
        if self.disconnected or self.response_started:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        parts = [STATUS_LINE[response.status_code]]
        for name, value in (*self.default_headers, *response.raw_headers):
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        body: Any = response.body
        parts += (b"\r\n", body)
        self.response_complete = True
        self.message_event.set()
        transport: Any = self.transport
        transport.write_whole(b"".join(parts))
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`, with the app's hot paths run directly."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)
        app = self.config.app
        hot: dict[str, Handler] = getattr(app, "hot_paths", None) or {}
        usable = hasattr(app, "answer") and not self.root_path and self.limit_concurrency is None
        usable = usable and not self.config.reset_contextvars
        self._hot = {path.encode(): handler for path, handler in hot.items()} if usable else {}

    def on_headers_complete(self) -> None:
        handler = self._hot.get(self.url)  # the exact path: a query string or an escape takes the usual way
        parser = self.parser
        if (handler is None or parser.get_method() != b"POST" or self.expect_100_continue
                or parser.should_upgrade()):
            super().on_headers_complete()
            return
        scope: Any = self.scope
        http_version = parser.get_http_version()
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = self.url.decode("ascii")
        scope["raw_path"] = self.url
        scope["query_string"] = b""
        existing = self.cycle
        self.cycle = cycle = HotCycle(
            scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is not None and not existing.response_complete:
            # A pipelined request waits its turn and then runs as uvicorn runs it (the app serves it too).
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))
            return
        task = self.loop.create_task(cycle.run_hot(self.config.app, handler))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)


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

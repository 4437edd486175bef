"""How the gateway is served: writes of one event-loop turn reach the socket as one send."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.server import ServerState

from gateway.server import CoalescingTransport, GatewayHttpProtocol, tune_gc, uvicorn_config
from tests.gateway.fake_upstream import UvicornThread


class RecordingTransport:
    """Test double for the real socket transport: records each write and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _wrap() -> tuple[CoalescingTransport, RecordingTransport]:
    real = RecordingTransport()
    return CoalescingTransport(real, asyncio.get_running_loop()), real  # type: ignore[arg-type]


async def test_a_head_leaves_with_what_follows_it_and_other_writes_go_straight_through() -> None:
    wrapped, real = _wrap()
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(b"")
    assert real.writes == []
    assert wrapped.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(b"body")  # the head leaves with the body, at once
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    wrapped.write(b"event 1")  # not a head: never waits
    wrapped.write(b"event 2")
    assert real.writes[1:] == [b"event 1", b"event 2"]
    wrapped.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # a head with nothing after it in its turn
    assert real.writes[3:] == []
    await asyncio.sleep(0)  # sent when the turn ends
    assert real.writes[3:] == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    await asyncio.sleep(0)
    assert len(real.writes) == 4


async def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    wrapped, real = _wrap()
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.close()
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]

    wrapped, real = _wrap()
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.aborted


async def test_everything_else_is_the_real_transports() -> None:
    wrapped, real = _wrap()
    assert wrapped.get_extra_info("peername") == ("127.0.0.1", 1)
    real.closed = True
    assert wrapped.is_closing()
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(b"to a closed socket")
    await asyncio.sleep(0)
    assert real.writes == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world", "more_body": False})


def test_served_answers_are_whole_and_keep_alive_works() -> None:
    assert uvicorn_config(_app, host="127.0.0.1", port=1).access_log is False
    server = UvicornThread(_app, as_gateway=True)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for _ in range(3):  # the same connection answers again: nothing was left unsent or closed
                sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"hello world"):
                    chunk = sock.recv(4096)
                    assert chunk, f"connection closed after {data!r}"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.stop()


def test_tune_gc_freezes_what_exists_and_collects_the_young_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 10_000  # the imported libraries, at least
        assert gc.get_threshold()[0] > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class HotApp:
    """Test double for the gateway app: its hot paths, its `answer`, and a plain ASGI way for the rest."""

    def __init__(self) -> None:
        self.hot_paths = {"/v1/echo": self._echo, "/v1/boom": self._boom}
        self.asgi_paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.asgi_paths.append(scope["path"])
        handler = self.hot_paths.get(scope["path"])
        if handler is not None:  # as the gateway app serves its hot paths when they come this way
            scope["app"] = self
            await (await self.answer(handler, Request(scope, receive)))(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        length = b"%d" % (5 + len(body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        await send({"type": "http.response.body", "body": b"asgi:" + body})

    async def answer(self, handler: Any, request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except RuntimeError:
            return Response(b"failed", status_code=500)
        return response

    async def _echo(self, request: Request) -> Response:
        assert request.app is self and request.method == "POST"
        return Response(b"echo:" + await request.body(), media_type="text/plain", headers={"x-n": "1"})

    async def _boom(self, request: Request) -> Response:
        raise RuntimeError("boom")


async def _served(app: HotApp) -> tuple[GatewayHttpProtocol, RecordingTransport]:
    config = uvicorn_config(app, host="127.0.0.1", port=1, log_level="warning", lifespan="off")
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={},
                                   _loop=asyncio.get_running_loop())
    real = RecordingTransport()
    protocol.connection_made(real)  # type: ignore[arg-type]
    return protocol, real


async def _answers(real: RecordingTransport, n: int) -> list[bytes]:
    for _ in range(100):
        if len(real.writes) >= n:
            break
        await asyncio.sleep(0)
    return real.writes


def _post(path: bytes, body: bytes, *, version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (path, version, len(body), body)


async def test_a_hot_path_answer_is_one_write_and_the_connection_stays_open() -> None:
    app = HotApp()
    protocol, real = await _served(app)
    for n, word in enumerate((b"hi", b"again"), start=1):
        protocol.data_received(_post(b"/v1/echo", word))
        writes = await _answers(real, n)
        assert len(writes) == n, writes
        head, _, body = writes[-1].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"echo:" + word
        assert b"\r\nx-n: 1" in head and b"content-length: %d" % len(body) in head
        assert b"connection: close" not in head
    assert not real.closed and app.asgi_paths == []  # served without the ASGI app


async def test_an_http_1_0_hot_request_is_answered_then_closed() -> None:
    protocol, real = await _served(HotApp())
    protocol.data_received(_post(b"/v1/echo", b"x", version=b"1.0"))
    [answer] = await _answers(real, 1)
    assert b"\r\nconnection: close\r\n" in answer and answer.endswith(b"echo:x")
    assert real.closed


async def test_a_failing_hot_handler_is_answered_through_the_apps_own_error_rendering() -> None:
    protocol, real = await _served(HotApp())
    protocol.data_received(_post(b"/v1/boom", b""))
    [answer] = await _answers(real, 1)
    assert answer.startswith(b"HTTP/1.1 500 ") and answer.endswith(b"failed")
    assert not real.closed


@pytest.mark.parametrize(("path", "answered"), [(b"/v1/echo?x=1", b"echo:yo"), (b"/v1/other", b"asgi:yo")])
async def test_other_requests_take_the_asgi_way(path: bytes, answered: bytes) -> None:
    app = HotApp()
    protocol, real = await _served(app)
    protocol.data_received(_post(path, b"yo"))
    [answer] = await _answers(real, 1)  # the head still leaves with the body
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(answered)
    assert app.asgi_paths == [path.decode().partition("?")[0]]


async def test_pipelined_hot_requests_are_answered_in_order() -> None:
    app = HotApp()
    protocol, real = await _served(app)
    protocol.data_received(_post(b"/v1/echo", b"one") + _post(b"/v1/echo", b"two"))
    writes = await _answers(real, 2)
    assert [w.rpartition(b"\r\n\r\n")[2] for w in writes] == [b"echo:one", b"echo:two"]
    assert app.asgi_paths == ["/v1/echo"]  # the one that waited its turn ran as uvicorn runs it

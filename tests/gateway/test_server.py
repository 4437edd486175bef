"""How the gateway is served: writes of one event-loop turn reach the socket as one send."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

from gateway.server import CoalescingTransport, tune_gc, uvicorn_config
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

"""The uvicorn in use has what gateway/server.py takes from its private httptools protocol.

`GatewayHttpProtocol` subclasses `HttpToolsProtocol`, builds `RequestResponseCycle`s itself and reads the
protocol's and the cycle's attributes: none of that is uvicorn's public API, so a new uvicorn may drop or
rename any of it. These tests name what is missing, rather than failing somewhere inside a request.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from importlib.metadata import version
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from gateway.server import uvicorn_config

UVICORN = f"uvicorn {version('uvicorn')}"
WHY = "which gateway/server.py relies on: keep uvicorn within pyproject.toml's bounds, or adapt the gateway"

# What GatewayHttpProtocol and HotCycle read or call on uvicorn's objects.
PROTOCOL_ATTRIBUTES = (
    "app", "config", "loop", "logger", "access_logger", "access_log", "root_path", "limit_concurrency",
    "server_state", "transport", "flow", "parser", "pipeline", "tasks", "cycle", "url", "scope",
    "expect_100_continue", "on_response_complete", "on_headers_complete", "connection_made",
)
CYCLE_ATTRIBUTES = (
    "scope", "transport", "flow", "logger", "default_headers", "keep_alive", "disconnected", "response_started",
    "response_complete", "waiting_for_100_continue", "message_event", "on_response", "receive", "send",
    "send_500_response",
)
CYCLE_PARAMETERS = {
    "scope", "transport", "flow", "logger", "access_logger", "access_log", "default_headers", "message_event",
    "expect_100_continue", "keep_alive", "on_response",
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_module_has_the_names_the_gateway_imports() -> None:
    names = ("HEADER_VALUE_RE", "STATUS_LINE", "HttpToolsProtocol", "RequestResponseCycle")
    missing = [name for name in names if not hasattr(httptools_impl, name)]
    assert not missing, f"{UVICORN}'s httptools_impl has no {missing}, {WHY}"
    assert httptools_impl.STATUS_LINE[200].startswith(b"HTTP/1.1 200 OK"), f"{UVICORN}: STATUS_LINE changed, {WHY}"
    assert httptools_impl.HEADER_VALUE_RE.search(b"bad\r\nvalue"), f"{UVICORN}: HEADER_VALUE_RE changed, {WHY}"


def test_the_config_has_reset_contextvars_off_by_default() -> None:
    config = uvicorn_config(_app, host="127.0.0.1", port=1)
    assert getattr(config, "reset_contextvars", None) is False, f"{UVICORN}'s Config lacks reset_contextvars, {WHY}"


def test_a_cycle_is_built_with_the_arguments_the_gateway_passes() -> None:
    parameters = set(inspect.signature(httptools_impl.RequestResponseCycle).parameters)
    assert parameters == CYCLE_PARAMETERS, (
        f"{UVICORN}'s RequestResponseCycle takes {sorted(parameters)}, not the {sorted(CYCLE_PARAMETERS)} {WHY}"
    )


async def test_a_served_request_leaves_the_protocol_and_cycle_with_what_the_gateway_reads() -> None:
    config = uvicorn_config(_app, host="127.0.0.1", port=1, log_level="warning", lifespan="off")
    config.load()
    loop = asyncio.get_running_loop()
    protocol = httptools_impl.HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    ours, theirs = socket.socketpair()
    try:
        await loop.connect_accepted_socket(lambda: protocol, ours)
        protocol.data_received(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.gather(*protocol.tasks)
        theirs.setblocking(False)
        assert (await loop.sock_recv(theirs, 1024)).startswith(b"HTTP/1.1 204 ")
        missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
        assert not missing, f"{UVICORN}'s HttpToolsProtocol has no {missing}, {WHY}"
        missing = [name for name in CYCLE_ATTRIBUTES if not hasattr(protocol.cycle, name)]
        assert not missing, f"{UVICORN}'s RequestResponseCycle has no {missing}, {WHY}"
        assert protocol.url == b"/x" and hasattr(protocol.server_state, "default_headers"), f"{UVICORN}: {WHY}"
        assert hasattr(protocol.flow, "write_paused"), f"{UVICORN}'s FlowControl has no write_paused, {WHY}"
    finally:
        protocol.transport.close()
        theirs.close()

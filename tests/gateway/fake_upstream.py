"""A test double for an OpenAI-compatible model server (vLLM-like), with failure modes to switch on.

It answers chat, completions and embeddings (streaming or not, usage only when asked, like vLLM),
/tokenize and /health, and records what it was sent. Failure modes: `stop()` (connections refused),
`fail_status` (an error status before any output), `break_after` (drop the connection mid-stream),
`chunk_delay_s` (a slow stream), `first_delay_s` (a slow first byte), `healthy=False` (health check fails).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.server import uvicorn_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_words(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass
class FakeState:
    reply_tokens: int = 5  # tokens generated when max_tokens allows
    fail_status: int | None = None
    break_after: int | None = None  # content chunks sent before the connection drops
    chunk_delay_s: float = 0.0
    first_delay_s: float = 0.0  # wait before the first byte of a stream
    healthy: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)  # as they arrived, before parsing
    headers: list[dict[str, str]] = field(default_factory=list)
    streams_started: int = 0
    streams_finished: int = 0
    streams_aborted: int = 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(count_words(str(m.get("content") or "")) for m in body["messages"]) + 3 * len(body["messages"])
    value = body.get("prompt", body.get("input", ""))
    if isinstance(value, list):
        return sum(count_words(v) if isinstance(v, str) else 1 for v in value)
    return count_words(str(value))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class UvicornThread:
    """An ASGI app served by uvicorn on its own thread and event loop, on a fixed free port."""

    def __init__(self, app: Any, *, lifespan: str = "off", as_gateway: bool = False) -> None:
        self.app = app
        self._as_gateway = as_gateway  # served the way the gateway serves itself (gateway.server)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lifespan = lifespan
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._as_gateway:
            config = uvicorn_config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                    lifespan=self._lifespan)
        else:
            config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", ws="none",
                                    lifespan=self._lifespan)  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=20)
        self._server = None


class FakeUpstream(UvicornThread):
    """The fake model server; `stop()` closes its port (connections refused), `start()` reopens it."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.state = FakeState()
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/tokenize", self._tokenize, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
        ]
        super().__init__(Starlette(routes=routes))

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        raw = await request.body()
        body: dict[str, Any] = orjson.loads(raw)
        self.state.raw_bodies.append(raw)
        self.state.requests.append(body)
        self.state.headers.append(dict(request.headers))
        if self.state.fail_status is not None:
            err = {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}}
            return Response(orjson.dumps(err), status_code=self.state.fail_status, media_type="application/json")
        return body

    def _completion_tokens(self, body: dict[str, Any]) -> int:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 10_000
        return min(self.state.reply_tokens, int(limit))

    async def _chat(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        n = self._completion_tokens(body)
        prompt = _prompt_tokens(body)
        if body.get("stream"):
            return self._stream(body, prompt, n, chat=True)
        choices = [{"index": i, "message": {"role": "assistant", "content": " ".join(["tok"] * n)},
                    "finish_reason": "length" if n < self.state.reply_tokens else "stop", "logprobs": None}
                   for i in range(int(body.get("n") or 1))]
        answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                  "model": body["model"], "choices": choices, "usage": _usage(prompt, n * len(choices))}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _completions(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        n = self._completion_tokens(body)
        prompt = _prompt_tokens(body)
        if body.get("stream"):
            return self._stream(body, prompt, n, chat=False)
        answer = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body["model"],
                  "choices": [{"index": 0, "text": " tok" * n, "finish_reason": "stop", "logprobs": None}],
                  "usage": _usage(prompt, n)}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _embeddings(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25, 0.125]} for i in range(len(inputs))]
        prompt = _prompt_tokens(body)
        answer = {"object": "list", "data": data, "model": body["model"],
                  "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _tokenize(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        return Response(orjson.dumps({"count": count_words(body.get("prompt", ""))}), media_type="application/json")

    async def _health(self, _request: Request) -> Response:
        return Response(status_code=200 if self.state.healthy else 503)

    def _stream(self, body: dict[str, Any], prompt: int, n: int, *, chat: bool) -> StreamingResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self._events(body, prompt, n, chat, include_usage), media_type="text/event-stream")

    async def _events(self, body: dict[str, Any], prompt: int, n: int, chat: bool,
                      include_usage: bool) -> AsyncIterator[bytes]:
        state = self.state
        state.streams_started += 1
        base = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "created": int(time.time()), "model": body["model"],
                "object": "chat.completion.chunk" if chat else "text_completion"}
        extra = {"usage": None} if include_usage else {}
        finished = False
        try:
            if state.first_delay_s:
                await asyncio.sleep(state.first_delay_s)
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield _event({**base, "choices": [first], **extra})
            for i in range(n):
                if state.break_after is not None and i >= state.break_after:
                    raise ConnectionAbortedError("fake upstream breaks mid-stream")
                if state.chunk_delay_s:
                    await asyncio.sleep(state.chunk_delay_s)
                choice = ({"index": 0, "delta": {"content": "tok "}, "finish_reason": None} if chat
                          else {"index": 0, "text": "tok ", "finish_reason": None})
                yield _event({**base, "choices": [choice], **extra})
            last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"})
            yield _event({**base, "choices": [last], **extra})
            if include_usage:
                yield _event({**base, "choices": [], "usage": _usage(prompt, n)})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if finished:
                state.streams_finished += 1
            else:
                state.streams_aborted += 1


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"

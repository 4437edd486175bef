"""A fast fake OpenAI-compatible upstream for the gateway benchmark: a raw ASGI app under uvicorn.

It answers `POST /v1/chat/completions` and `/v1/completions` with a fixed body (non-streaming) or with
N content events, one usage event and `[DONE]` (streaming). N is the request's `max_tokens` when given
(capped), so one running upstream serves streams of several lengths; the per-chunk relay cost of a
proxy is read by comparing streams of two lengths. It also answers `GET /v1/models`, `GET /health`
and `GET /stats` (completions served so far: what a proxy really forwarded, including requests a
client gave up on, which is what the proxy's CPU was spent on).
Everything is precomputed so the upstream never bounds the proxies it is compared with.

Run: python benchmarks/fake_upstream.py --port 9100 [--chunks 19]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL = "bench-model"
MAX_CHUNKS = 1000
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 16


def _completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_800_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello " * COMPLETION_TOKENS},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk_event(finish: str | None) -> bytes:
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_800_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason": finish}],
            "usage": None,
        }
    )


def _usage_event(completion_tokens: int) -> bytes:
    # OpenAI's shape: one last chunk with empty choices carries the totals.
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_800_000_000,
            "model": MODEL,
            "choices": [],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": completion_tokens,
                "total_tokens": PROMPT_TOKENS + completion_tokens,
            },
        }
    )


class FakeUpstream:
    """The ASGI app; `default_chunks` is the stream length when a request names no max_tokens."""

    def __init__(self, default_chunks: int = 19) -> None:
        self.default_chunks = default_chunks
        self._body = _completion_body()
        self._chunk = _chunk_event(None)
        self._last = _chunk_event("stop")
        self._usage = {n: _usage_event(n) for n in (default_chunks,)}
        self.served = 0
        self._models = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path in ("/health", "/healthz"):
                await _respond(send, 200, b"{}")
            elif path == "/stats":
                await _respond(send, 200, orjson.dumps({"served": self.served}))
            elif path.endswith("/models"):
                await _respond(send, 200, self._models)
            else:
                await _respond(send, 404, b'{"error": {"message": "not found"}}')
            return
        raw = await _read_body(receive)
        try:
            request = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            await _respond(send, 400, b'{"error": {"message": "bad json"}}')
            return
        if request.get("stream"):
            await self._stream(send, _chunks(request, self.default_chunks), _interval_s(request))
        else:
            await _respond(send, 200, self._body)
        self.served += 1

    async def _stream(self, send: Send, chunks: int, interval_s: float = 0.0) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        for _ in range(chunks - 1):
            await send({"type": "http.response.body", "body": self._chunk, "more_body": True})
            if interval_s:
                await asyncio.sleep(interval_s)
        await send({"type": "http.response.body", "body": self._last, "more_body": True})
        usage = self._usage.get(chunks) or self._usage.setdefault(chunks, _usage_event(chunks))
        await send({"type": "http.response.body", "body": usage, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _interval_s(request: dict[str, Any]) -> float:
    """Pause between chunks asked by the benchmark (`x_chunk_interval_ms`), at most 100 ms."""
    wanted = request.get("x_chunk_interval_ms") or 0
    return max(0.0, min(float(wanted), 100.0)) / 1000


def _chunks(request: dict[str, Any], default: int) -> int:
    wanted = request.get("max_tokens") or request.get("max_completion_tokens") or default
    return max(1, min(int(wanted), MAX_CHUNKS))


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main() -> None:
    """Serve the fake upstream on loopback with uvloop and httptools."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=19, help="stream length when max_tokens is absent")
    args = parser.parse_args()
    uvicorn.run(
        FakeUpstream(args.chunks),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()

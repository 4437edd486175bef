"""Prompt token counts for the hold: the worker's tokenizer where it has one, else a safe upper bound."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson

from gateway.validation import Endpoint, ParsedRequest
from vouchers.models import WorkerRecord

log = logging.getLogger(__name__)

# Chat templates add role markers and separators around each message; no template we know of adds more.
_PER_MESSAGE_OVERHEAD = 8
_FIXED_OVERHEAD = 16


def upper_bound(raw_body: bytes) -> int:
    """Tokens the body can hold at most: byte-level tokenizers never make a token out of less than a byte.

    The whole JSON body contains every prompt character plus markup that outweighs the chat template.
    """
    return len(raw_body) + _FIXED_OVERHEAD


def rough_estimate(raw_body: bytes) -> int:
    """A typical count (about four bytes a token) for rate limits, which should not overcount like the bound."""
    return len(raw_body) // 4 + 1


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None  # images or audio: the text tokenizer cannot count them
            parts.append(part["text"])
        return "\n".join(parts)
    return None


def _text_of(parsed: ParsedRequest) -> tuple[str, int] | None:
    """The text to tokenize and the overhead to add to its count, or None when text alone cannot tell."""
    body = parsed.body
    if parsed.endpoint is Endpoint.CHAT:
        texts = []
        for msg in body["messages"]:
            text = _content_text(msg.get("content"))
            if text is None:
                return None
            texts.append(text)
            if msg.get("tool_calls"):
                texts.append(orjson.dumps(msg["tool_calls"]).decode())
        for extra in ("tools", "functions", "response_format"):
            if body.get(extra):
                texts.append(orjson.dumps(body[extra]).decode())
        return "\n".join(texts), _FIXED_OVERHEAD + _PER_MESSAGE_OVERHEAD * len(body["messages"])
    value = body["prompt" if parsed.endpoint is Endpoint.COMPLETIONS else "input"]
    if isinstance(value, str):
        return value, _FIXED_OVERHEAD
    if all(isinstance(v, str) for v in value):
        return "\n".join(value), _FIXED_OVERHEAD + 2 * len(value)
    return None  # token ids: the byte bound already counts at least one byte per id


async def count(
    client: aiohttp.ClientSession, worker: WorkerRecord, parsed: ParsedRequest, *, timeout_s: float
) -> int | None:
    """Count the prompt with the worker's tokenizer; None if it has none or the call fails."""
    if worker.tokenize_path is None:
        return None
    found = _text_of(parsed)
    if found is None:
        return None
    text, overhead = found
    url = worker.url.rstrip("/") + worker.tokenize_path
    try:
        async with client.post(url, data=orjson.dumps({"model": parsed.model, "prompt": text, "input": text}),
                               headers={"content-type": "application/json"},
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            resp.raise_for_status()
            answer = orjson.loads(await resp.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        log.warning("tokenizer call failed, using the upper bound: %s", type(exc).__name__,
                    extra={"worker": worker.id})
        return None
    if isinstance(answer, dict):
        if isinstance(answer.get("count"), int):
            return int(answer["count"]) + overhead
        if isinstance(answer.get("tokens"), list):
            return len(answer["tokens"]) + overhead
    return None

"""Parse and check an OpenAI request body: only the fields the gateway needs; the rest passes through."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from vouchers.errors import InvalidRequest

MAX_N = 128


class Endpoint(StrEnum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class ParsedRequest:
    """What metering and routing need to know about a request, next to the untouched body."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    max_tokens: int | None  # per generated choice; None when the client set no bound
    generations: int  # choices generated: prompts x max(n, best_of)


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidRequest(f"'messages[{i}]' must be an object with a 'role'", param=f"messages[{i}]")


def _prompt_count(body: dict[str, Any], name: str) -> int:
    """How many prompts a completions/embeddings input holds (a token list is one prompt)."""
    value = body.get(name)
    if isinstance(value, str):
        return 1
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return 1
        if all(isinstance(v, str | list) for v in value):
            return len(value)
    raise InvalidRequest(f"'{name}' must be a string, an array of strings or an array of tokens", param=name)


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)
    return bool(stream), wants_usage


def parse(raw: bytes, endpoint: Endpoint, *, max_tokens_cap: int) -> ParsedRequest:
    """Check the fields metering depends on; 400 naming the field when one is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    stream, wants_usage = _stream_flags(body)
    if endpoint is Endpoint.EMBEDDINGS:
        _prompt_count(body, "input")
        return ParsedRequest(endpoint, body, model, False, False, None, 0)
    if endpoint is Endpoint.CHAT:
        _check_messages(body)
        prompts = 1
    else:
        prompts = _prompt_count(body, "prompt")
    n = _int_field(body, "n", 1, MAX_N) or 1
    best_of = _int_field(body, "best_of", 1, MAX_N) or 1
    # Newer clients send max_completion_tokens; engines prefer it over max_tokens, and so do we.
    max_tokens = _int_field(body, "max_tokens", 1, max_tokens_cap)
    max_completion = _int_field(body, "max_completion_tokens", 1, max_tokens_cap)
    bound = max_completion if max_completion is not None else max_tokens
    return ParsedRequest(endpoint, body, model, stream, wants_usage, bound, prompts * max(n, best_of))

"""Relay an upstream server-sent event stream: count what it delivers, hold back an unasked usage chunk.

Events are forwarded as the upstream wrote them; a chunk is parsed only to count tokens and find usage.
"""

from __future__ import annotations

import orjson

from gateway.metering import Usage, usage_from

_SEP = b"\n\n"
_DATA = b"data:"


class StreamCounter:
    """Splits upstream bytes into events and keeps the counts needed to settle the request."""

    def __init__(self, *, forward_usage: bool) -> None:
        self._forward_usage = forward_usage
        self._buffer = b""
        self.usage: Usage | None = None  # what the upstream reported, if it did
        self.chunks_with_output = 0  # choices carrying generated text: at least one token each
        self.events = 0

    def feed(self, data: bytes) -> bytes:
        """Bytes to send on to the client for this piece of the upstream stream (maybe empty)."""
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        first = buffer.find(_SEP)
        if first < 0:
            self._buffer = buffer
            return b""
        if first == len(buffer) - 2:
            # Exactly one complete event, the usual piece of a stream relayed as it is made: pass it on uncopied.
            self._buffer = b""
            event = buffer[:first]
            kept = self._relay(event)
            if kept is event:
                return buffer
            return b"" if kept is None else kept + _SEP
        *complete, self._buffer = buffer.split(_SEP)
        out = [kept + _SEP for event in complete if (kept := self._relay(event)) is not None]
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever the upstream left unterminated at the end of the stream."""
        rest, self._buffer = self._buffer, b""
        if rest.strip() and (kept := self._relay(rest)) is not None:
            return kept + _SEP
        return b""

    def _relay(self, event: bytes) -> bytes | None:
        """The event as the client should see it, or None to hold it back."""
        self.events += 1
        if not event.startswith(_DATA):
            return event
        payload = event[len(_DATA):].strip()
        if not payload.startswith(b"{"):
            return event  # [DONE] and anything else we do not read
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if _has_output(choice):
                    self.chunks_with_output += 1
        reported = chunk.get("usage")
        usage = usage_from(reported) if reported is not None else None
        if usage is None:
            return event
        self.usage = usage
        if not choices:
            # The usage-only chunk exists because we asked for it; a client that did not ask never sees it.
            return event if self._forward_usage else None
        # vLLM with --enable-force-include-usage puts running totals on text chunks too; OpenAI sends
        # usage only on the last chunk (null elsewhere when asked for, absent when not).
        if self._forward_usage:
            chunk["usage"] = None
        else:
            del chunk["usage"]
        return _DATA + b" " + orjson.dumps(chunk)


def _has_output(choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
                    or delta.get("function_call"))
    return False

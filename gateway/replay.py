"""What is kept of an answered request with an Idempotency-Key, and what a retry with that key gets.

A kept record holds the request's fingerprint (its endpoint and exact body) and the answer as the client
received it: the JSON of a unary answer, or every event of a finished stream. A retry with the same key
and the same body gets that answer again; with another body it gets 422, as the IETF Idempotency-Key
draft asks, because the key names one request. When the answer itself could not be kept (too large, or a
stream cut short and charged for what it sent), the record keeps the fingerprint alone: the same request
then hears 409 (it ran and was charged once) and another request still hears 422.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from starlette.responses import Response

from gateway.errors import IdempotencyMismatch
from vouchers.errors import Conflict

_MAGIC = b"shuqi-kept/1 "
PARAM = "Idempotency-Key"


class Kept(StrEnum):
    JSON = "json"  # a unary answer
    SSE = "sse"  # a whole stream, as the client received it
    NONE = "none"  # the request ran and was charged; its answer is not kept


@dataclass(frozen=True)
class Keeping:
    """Where and under which fingerprint a request's answer is kept."""

    key: str
    fingerprint: str


def fingerprint(endpoint: str, body: bytes) -> str:
    """The request's identity for its Idempotency-Key: its endpoint and its body, byte for byte."""
    return hashlib.blake2b(endpoint.encode() + b"\n" + body, digest_size=16).hexdigest()


def encode(fp: str, kind: Kept, answer: bytes) -> bytes:
    """One kept record (UTF-8 text, as the stores keep it)."""
    return _MAGIC + fp.encode() + b" " + kind.encode() + b"\n" + answer


def decode(record: bytes) -> tuple[str | None, Kept, bytes]:
    """(fingerprint, kind, answer); a record from before fingerprints is a unary answer with none."""
    if not record.startswith(_MAGIC):
        return None, Kept.JSON, record
    head, _, answer = record.partition(b"\n")
    fp, _, kind = head[len(_MAGIC):].decode().partition(" ")
    return fp, Kept(kind), answer


def replay(record: bytes | None, fp: str, headers: dict[str, str]) -> Response:
    """The answer for a retry of an answered request: the kept answer, else 422 or 409."""
    kept_fp, kind, answer = decode(record) if record is not None else (None, Kept.NONE, b"")
    if kept_fp is not None and kept_fp != fp:
        raise IdempotencyMismatch(
            "This Idempotency-Key was used by a request with another body or endpoint. A key names one request: "
            "send the same request again, or use a new key.", param=PARAM, headers={"x-should-retry": "false"})
    if kind is Kept.NONE:
        raise Conflict("A request with this Idempotency-Key was answered and charged once, and its answer is not "
                       "kept (too large, too old, or a stream cut short) to send again. Send a new key for a new "
                       "request.", param=PARAM, headers={"x-should-retry": "false"})
    media = "text/event-stream" if kind is Kept.SSE else "application/json"
    return Response(answer, media_type=media, headers={**headers, "idempotent-replayed": "true"})

"""Every error as the API shows it: its HTTP status and OpenAI's `{"error": {...}}`, ours or the framework's.

The domain errors come from `vouchers.errors`; the ones only the gateway raises are defined here. Each
class has one shape (status, type, code) in `_SHAPES`; a subclass without its own takes its parent's.

    ShuqiError (vouchers.errors)                500 server_error / internal_error
    ├── InvalidRequest            400 invalid_request_error (param names the field)
    ├── AuthenticationError       401 invalid_api_key
    ├── PermissionDenied          403 permission_denied
    ├── NotFound                  404 not_found
    │   └── ModelNotFound         404 model_not_found                    (gateway)
    ├── Conflict                  409 conflict
    ├── PayloadTooLarge           413 request_too_large                  (gateway)
    ├── IdempotencyMismatch       422 idempotency_key_reused             (gateway)
    ├── InsufficientQuota         429 insufficient_quota (x-should-retry: false)
    ├── RateLimited               429 rate_limit_exceeded (retry-after)  (gateway)
    ├── UpstreamError             502 upstream_error                     (gateway)
    ├── QueueFull                 429 rate_limit_exceeded (the startup's queued-jobs cap)  (vouchers.jobs)
    ├── ModelUnavailable          503 model_unavailable                  (gateway)
    └── ServiceUnavailable        503 service_unavailable (retry-after)  (gateway)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vouchers.errors import (
    AuthenticationError,
    Conflict,
    InsufficientQuota,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ShuqiError,
)
from vouchers.jobs import QueueFull

log = logging.getLogger(__name__)


class ModelNotFound(NotFound):
    """A model that does not exist, or that the caller may not use."""


class PayloadTooLarge(ShuqiError):
    """A request body over its size limit."""


class IdempotencyMismatch(ShuqiError):
    """An Idempotency-Key sent again with another request (IETF Idempotency-Key draft: 422)."""


class RateLimited(ShuqiError):
    """Over the startup's requests or tokens per minute."""


class UpstreamError(ShuqiError):
    """The model server failed; the caller is not charged."""


class ModelUnavailable(ShuqiError):
    """No healthy worker serves the model right now."""


class ServiceUnavailable(ShuqiError):
    """A part the call needs is not there yet (the scheduler has not reported the cluster); retry later."""


@dataclass(frozen=True)
class Shape:
    """How the API shows an error: HTTP status, OpenAI `type` and `code`, and headers every answer carries."""

    status: int
    type: str
    code: str
    headers: tuple[tuple[str, str], ...] = ()


_INVALID = "invalid_request_error"
_SHAPES: dict[type[ShuqiError], Shape] = {
    ShuqiError: Shape(500, "server_error", "internal_error"),
    InvalidRequest: Shape(400, _INVALID, "invalid_request_error"),
    AuthenticationError: Shape(401, _INVALID, "invalid_api_key"),
    PermissionDenied: Shape(403, _INVALID, "permission_denied"),
    NotFound: Shape(404, _INVALID, "not_found"),
    ModelNotFound: Shape(404, _INVALID, "model_not_found"),
    Conflict: Shape(409, _INVALID, "conflict"),
    PayloadTooLarge: Shape(413, _INVALID, "request_too_large"),
    IdempotencyMismatch: Shape(422, _INVALID, "idempotency_key_reused"),
    InsufficientQuota: Shape(429, "insufficient_quota", "insufficient_quota", (("x-should-retry", "false"),)),
    RateLimited: Shape(429, "requests", "rate_limit_exceeded"),
    UpstreamError: Shape(502, "server_error", "upstream_error"),
    ModelUnavailable: Shape(503, "server_error", "model_unavailable"),
    ServiceUnavailable: Shape(503, "server_error", "service_unavailable"),
    QueueFull: Shape(429, "requests", "rate_limit_exceeded"),
}


def shape(exc: ShuqiError) -> Shape:
    """The shape of this error's class, or of its nearest ancestor that has one."""
    for cls in type(exc).__mro__:
        found = _SHAPES.get(cls)
        if found is not None:
            return found
    return _SHAPES[ShuqiError]


def status(exc: ShuqiError) -> int:
    """The HTTP status of an error."""
    return shape(exc).status


def body(exc: ShuqiError) -> dict[str, dict[str, str | None]]:
    """OpenAI's error object for an error."""
    s = shape(exc)
    return {"error": {"message": exc.message, "type": s.type, "param": exc.param, "code": s.code}}

_FRAMEWORK_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media"}


def error_response(exc: ShuqiError, headers: dict[str, str] | None = None) -> Response:
    """The JSON response for one of our errors, with its own headers plus any given."""
    s = shape(exc)
    merged = {**(headers or {}), **dict(s.headers), **exc.headers}
    return Response(orjson.dumps(body(exc)), status_code=s.status, media_type="application/json", headers=merged)


def sse_error_event(exc: ShuqiError) -> bytes:
    """An error as the final server-sent event of a stream that has already started."""
    return b"data: " + orjson.dumps(body(exc)) + b"\n\n"


def _param_from_loc(loc: tuple[object, ...] | list[object]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _shuqi_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ShuqiError):
        raise exc
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param_from_loc(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": "invalid_request_error"}}
    return Response(orjson.dumps(body), status_code=400, media_type="application/json")


async def _http_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    code = _FRAMEWORK_CODES.get(exc.status_code, "invalid_request_error")
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": code}}
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json",
                    headers=dict(exc.headers or {}))


def unexpected_error(request: Request) -> Response:
    """Log the exception being handled and answer 500 in the OpenAI shape, without any detail."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {"error": {"message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}}
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")


async def _unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error(request)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the OpenAI shape."""
    app.add_exception_handler(ShuqiError, _shuqi_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

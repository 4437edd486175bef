"""Render every error, ours or the framework's, as OpenAI's `{"error": {...}}`."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vouchers.errors import ShuqiError

log = logging.getLogger(__name__)

_FRAMEWORK_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media"}


def error_response(exc: ShuqiError, headers: dict[str, str] | None = None) -> Response:
    """The JSON response for one of our errors, with its own headers plus any given."""
    merged = {**(headers or {}), **exc.headers}
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=merged)


def sse_error_event(exc: ShuqiError) -> bytes:
    """An error as the final server-sent event of a stream that has already started."""
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"


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

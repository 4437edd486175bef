"""One error hierarchy for the whole product; each error knows its HTTP status and OpenAI shape.

    ShuqiError
    ├── InvalidRequest            400 invalid_request_error (param names the field)
    ├── AuthenticationError       401 invalid_api_key
    ├── PermissionDenied          403 permission_denied
    ├── NotFound                  404 not_found
    │   └── ModelNotFound         404 model_not_found
    ├── Conflict                  409 conflict
    ├── PayloadTooLarge           413 request_too_large
    ├── IdempotencyMismatch       422 idempotency_key_reused
    ├── InsufficientQuota         429 insufficient_quota (x-should-retry: false)
    ├── RateLimited               429 rate_limit_exceeded (retry-after)
    ├── UpstreamError             502 upstream_error
    └── ModelUnavailable          503 model_unavailable
"""

from __future__ import annotations


class ShuqiError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ShuqiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class AuthenticationError(ShuqiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


# What a caller with an unknown or revoked key is told (the two are not told apart).
BAD_KEY = "Incorrect API key provided."


class PermissionDenied(ShuqiError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(ShuqiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ShuqiError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ShuqiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class IdempotencyMismatch(ShuqiError):
    """An Idempotency-Key sent again with another request (IETF Idempotency-Key draft: 422)."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class InsufficientQuota(ShuqiError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, param=param, headers={"x-should-retry": "false", **(headers or {})})


class RateLimited(ShuqiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamError(ShuqiError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class ModelUnavailable(ShuqiError):
    status = 503
    type = "server_error"
    code = "model_unavailable"

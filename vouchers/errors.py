"""The domain errors of the ledger and its stores, one hierarchy for the whole product.

    ShuqiError
    ├── InvalidRequest            a bad argument (`param` names it)
    ├── AuthenticationError       an unknown or revoked API key
    ├── PermissionDenied          a caller that may not do this
    ├── NotFound                  an unknown id
    ├── Conflict                  a state that does not allow it (an id that exists, a closed hold)
    └── InsufficientQuota         not enough credit in force for the amount

They say what went wrong, not how a protocol shows it: the HTTP status and the OpenAI error shape of each,
and the errors only the gateway raises (an upstream that failed, a body too large, ...), are in
`gateway/errors.py`.
"""

from __future__ import annotations


class ShuqiError(Exception):
    """Base of every error the product raises on purpose; `headers` carries hints for the caller (retry-after)."""

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequest(ShuqiError):
    """A bad argument; `param` names it."""


class AuthenticationError(ShuqiError):
    """An unknown or revoked API key (the two are not told apart)."""


# What a caller with an unknown or revoked key is told (the two are not told apart).
BAD_KEY = "Incorrect API key provided."


class PermissionDenied(ShuqiError):
    """A caller that may not do this."""


class NotFound(ShuqiError):
    """An unknown id."""


class Conflict(ShuqiError):
    """A state that does not allow it: an id that exists, a hold that is closed."""


class InsufficientQuota(ShuqiError):
    """Not enough credit in force for the amount asked."""

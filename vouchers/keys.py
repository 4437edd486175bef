"""API key secrets: random, prefixed, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-shuqi-"


def new_secret() -> str:
    """A fresh startup key: 256 random bits behind the `sk-shuqi-` prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a key: sha256 hex. Keys carry 256 bits, so no slow hash is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id(prefix: str) -> str:
    """A short random id such as `vch_3f9a...`."""
    return f"{prefix}_{secrets.token_hex(8)}"

"""Tokens: join tokens for agents and API tokens for clients; only their SHA-256 hashes are kept."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits of randomness; guessing one is hopeless
JOIN_PREFIX = "rsj_"  # makes a leaked token recognisable (secret scanners, logs)
API_PREFIX = "rsa_"


def new_token(prefix: str) -> str:
    """Return a fresh random URL-safe token starting with `prefix`."""
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def new_join_token() -> str:
    """Return a fresh join token."""
    return new_token(JOIN_PREFIX)


def new_api_token() -> str:
    """Return a fresh API token."""
    return new_token(API_PREFIX)


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def tokens_equal(given: str, expected: str) -> bool:
    """Compare two tokens in constant time (for the admin token, which is not in the store)."""
    return hmac.compare_digest(hash_token(given), hash_token(expected))

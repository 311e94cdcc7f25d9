"""Tokens: join tokens for agents and API tokens for clients; only their SHA-256 hashes are kept."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from enum import StrEnum

from relaysync.errors import ConfigError

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits of randomness; guessing one is hopeless
JOIN_PREFIX = "rsj_"  # makes a leaked token recognisable (secret scanners, logs)
API_PREFIX = "rsa_"
ADMIN_CREATOR = "admin"  # created_by of a token the admin token created; "api:<id>" otherwise


class TokenScope(StrEnum):
    """What an API token may do; the admin token may do everything."""

    READ = "read"  # GET and HEAD only: nothing it reads is secret (secrets are masked)
    ADMIN = "admin"  # every method on every route, tokens included


def api_creator(token_id: int) -> str:
    """The created_by of a token that API token `token_id` created."""
    return f"api:{token_id}"


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


# --- Join strings: a join token and the fingerprint of the CA the agent must find ---
#
# `<join token>.<64 hex>`: the SHA-256 of the fleet CA certificate's DER (what `openssl x509
# -noout -fingerprint -sha256 -in ca.pem` prints, without colons). The agent sends only the
# token and refuses a master whose CA has another fingerprint (kubeadm's
# --discovery-token-ca-cert-hash): whoever answers its first join cannot make it trust their CA.
JOIN_STRING_SEPARATOR = "."  # never in a token: token_urlsafe uses A-Z a-z 0-9 - _
_FINGERPRINT_HEX = 64


def join_string(token: str, ca_fingerprint: str) -> str:
    """Return what an agent is given to join: the token and the CA's fingerprint."""
    return f"{token}{JOIN_STRING_SEPARATOR}{ca_fingerprint}"


def split_join_string(value: str) -> tuple[str, str | None]:
    """Split a join string into (token, CA fingerprint); a bare token gives (token, None).

    Raises:
        ConfigError: the part after the separator is not a SHA-256 fingerprint.
    """
    token, sep, fingerprint = value.strip().partition(JOIN_STRING_SEPARATOR)
    if not sep:
        return token, None
    return token, normalize_fingerprint(fingerprint)


def normalize_fingerprint(value: str) -> str:
    """A SHA-256 fingerprint as lower-case hex: colons, spaces and a `sha256:` prefix are taken.

    Raises:
        ConfigError: it is not 64 hex digits.
    """
    hex_digits = value.strip().lower().removeprefix("sha256:").removeprefix("sha256=")
    hex_digits = hex_digits.replace(":", "").replace(" ", "")
    if len(hex_digits) != _FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in hex_digits):
        raise ConfigError(
            f"{value[:80]!r} is not a CA fingerprint: give the SHA-256 of the fleet's CA "
            "certificate, 64 hex digits (colons allowed), as `relaysync token create-join` "
            "prints it after the '.' of a join string"
        )
    return hex_digits

"""Hiding secrets in what the API sends back: headers, secret-looking keys, request bodies,
URL credentials and paths.

Every API token may read these resources, so a value that grants access elsewhere (a webhook's
Authorization header, an SMS gateway's key, a password, a token in a URL) is replaced by
`HIDDEN`. A stored secret is never sent back; a body that carries the mask itself is refused
(`refuse_masked`), so a listing posted back cannot store the mask in place of the secret.
"""

from __future__ import annotations

import re
from typing import Any

from relaysync.errors import ConfigError
from relaysync.monitor.alerts.base import hide_url

HIDDEN = "********"
# Keys whose values are credentials: password, passwd, secret, token, api_key, X-Api-Key, auth...,
# and request body templates (an SMS gateway's JSON body holds its api_key and api_secret).
SECRET_KEY = re.compile(
    r"pass|secret|token|key|auth|credential|signature|body|template", re.IGNORECASE
)
HEADER_KEYS = frozenset({"headers"})  # every header value is hidden, whatever its name


def mask(value: Any, key: str = "") -> Any:
    """Return `value` (a JSON-like config) with every secret in it replaced by HIDDEN."""
    if key.lower() in HEADER_KEYS and isinstance(value, dict):
        return {k: HIDDEN for k in value}
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if SECRET_KEY.search(key) and value not in ("", None):
        return HIDDEN
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """Hide a URL's userinfo (user:password@), its path and the value of each query parameter."""
    return hide_url(url, HIDDEN)


def refuse_masked(value: Any, what: str) -> None:
    """Raise ConfigError if `value` holds HIDDEN anywhere: a listing sent back, not a secret.

    Raises:
        ConfigError: naming the resource.
    """
    if isinstance(value, dict):
        for v in value.values():
            refuse_masked(v, what)
    elif isinstance(value, list):
        for v in value:
            refuse_masked(v, what)
    elif isinstance(value, str) and HIDDEN in value:
        raise ConfigError(
            f"{what} holds {HIDDEN!r}, the mask the API shows for a hidden value: "
            f"give the real value (secrets are never sent back)"
        )

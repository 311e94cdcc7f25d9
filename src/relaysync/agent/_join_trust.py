"""Join trust: how an agent checks the master's HTTPS API before it sends its join token.

Over https the agent first fetches the fleet's CA (GET /api/ca) without checking the server,
compares its SHA-256 with the fingerprint of the join string, and refuses another CA
(MasterNotTrusted) before any token is sent; the join request then goes over a connection
checked against that CA alone, to the master's certificate alone (auth/api_trust.py). With
--insecure-first-join and a bare token it joins over https unchecked, and says so. Over plain
http nothing can be checked (a master on loopback); on another host the agent warns.

Error handling: httpx errors become MasterUnreachable, a refused certificate
ApiCertificateRefused, an unusable /api/ca answer JoinAnswerRefused.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import urlsplit

import httpx

from relaysync._util.addresses import is_loopback
from relaysync.auth.api_trust import FLEET_API_CA_HINT, certificate_problem, fleet_api_context
from relaysync.auth.ca import fingerprint, one_certificate
from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import (
    ApiCertificateRefused,
    AuthError,
    JoinAnswerRefused,
    MasterNotTrusted,
    MasterUnreachable,
)

logger = logging.getLogger(__name__)


def join_verify(master_url: str, expected: str | None) -> ssl.SSLContext | bool:
    """What the join request checks the master's certificate with (httpx's `verify`).

    Raises:
        MasterNotTrusted: the master's CA is not the expected one; no token was sent.
        JoinAnswerRefused: /api/ca answered something that is not one certificate.
        MasterUnreachable: the master did not answer.
    """
    parts = urlsplit(master_url)
    if parts.scheme != "https":
        if not is_loopback(parts.hostname or ""):
            logger.warning(
                "joining %s over plain http: the join token crosses the network in clear "
                "(a master on another host serves https by default: use https://)",
                master_url,
            )
        return True
    if expected is None:
        logger.warning(
            "joining %s over https without checking its certificate (--insecure-first-join)",
            master_url,
        )
        return False
    ca_pem = fetch_fleet_ca(master_url)
    got = fingerprint(ca_pem)
    if got != expected:
        raise MasterNotTrusted(master_url, got, expected)
    return fleet_api_context(ca_pem)


def fetch_fleet_ca(master_url: str) -> bytes:
    """GET /api/ca, unchecked (what it returns is checked by its fingerprint): one certificate.

    Raises:
        JoinAnswerRefused: not a JSON object with one PEM certificate in ca_pem.
        MasterUnreachable: no answer, or not 200.
    """
    url = master_url.rstrip("/") + "/api/ca"
    try:
        response = httpx.get(url, verify=False, timeout=HTTP_TIMEOUT_S)  # noqa: S501 - see above
    except httpx.HTTPError as exc:
        raise MasterUnreachable(master_url, exc) from exc
    if response.status_code != 200:
        raise MasterUnreachable(master_url, f"GET /api/ca: HTTP {response.status_code}")
    try:
        text = response.json()["ca_pem"]
        return one_certificate(str(text).encode("ascii"))
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, AuthError) as exc:
        raise JoinAnswerRefused(master_url, f"GET /api/ca: not one CA certificate ({exc})") from exc


def join_error(master_url: str, exc: httpx.HTTPError) -> AuthError | MasterUnreachable:
    """The relaysync error for a failed join request: a refused certificate, or no answer."""
    why = certificate_problem(exc)
    if why is not None:
        return ApiCertificateRefused(master_url, why, FLEET_API_CA_HINT)
    return MasterUnreachable(master_url, exc)

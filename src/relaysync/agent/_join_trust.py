"""Join trust: how an agent checks the master's HTTPS API before it sends its join token.

Over https the agent first fetches the fleet's CA (GET /api/ca) without checking the server,
compares its SHA-256 with the fingerprint of the join string, and refuses another CA
(MasterNotTrusted) before any token is sent. It then needs a channel it can check: a master
with api_tls = "fleet" serves a certificate from that CA (taken only if it is the master's,
auth/api_trust.py); one with api_tls = "files" serves the operator's own, checked against the
agent's api_ca_file only when the operator gave one. Never against what httpx trusts by default
(certifi's bundle, SSL_CERT_FILE): /api/ca is public, so an on-path host holding any publicly
trusted certificate for the master's name could relay it and receive the token. Over whichever
channel verifies, /api/ca is fetched again and must still have the join string's fingerprint;
the join request goes over that channel. With --insecure-first-join and a bare token it joins
over https unchecked, and says so. Over plain http nothing can be checked: allowed to a master
on loopback, refused to another host (ConfigError: use https://) unless allow_plain_http_join
or insecure_first_join says to send the token in clear.

Error handling: httpx errors become MasterUnreachable, a refused certificate
ApiCertificateRefused, an unusable /api/ca answer JoinAnswerRefused.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from relaysync._util.addresses import is_loopback
from relaysync.auth.api_trust import (
    certificate_problem,
    file_api_context,
    fleet_api_context,
)
from relaysync.auth.ca import fingerprint, one_certificate
from relaysync.config.load import check_master_url
from relaysync.config.schema import AgentConfig
from relaysync.constants import CONNECT_TIMEOUT_S, HTTP_TIMEOUT_S
from relaysync.errors import (
    ApiCertificateRefused,
    AuthError,
    ConfigError,
    JoinAnswerRefused,
    MasterNotTrusted,
    MasterUnreachable,
)

logger = logging.getLogger(__name__)

JOIN_API_HINT = (
    "a master with api_tls = fleet must have the host name or address of --master among its "
    "certificate's names (add it to the master's api_names: the certificate is made again at "
    "its next start); for a master with api_tls = files give this agent --api-ca-file "
    "(api_ca_file) with the CA that issued the operator's certificate (certifi's bundle and "
    "SSL_CERT_FILE are not used for a join)"
)
HTTPS_HINT = "a master that serves https drops plain http: use https:// in --master"


def join_verify(cfg: AgentConfig, expected: str | None) -> ssl.SSLContext | bool:
    """What the join request checks the master's certificate with (httpx's `verify`).

    Raises:
        ConfigError: plain http to another host, not allowed; a URL that is not http(s)://host:port.
        MasterNotTrusted: the master's CA is not the expected one; no token was sent.
        ApiCertificateRefused: no channel to the master could be checked; no token was sent.
        JoinAnswerRefused: /api/ca answered something that is not one certificate.
        MasterUnreachable: the master did not answer.
    """
    master_url = check_master_url(cfg.master_url)
    if urlsplit(master_url).scheme != "https":
        check_plain_join(master_url, cfg.allow_plain_http_join or cfg.insecure_first_join)
        return True
    if expected is None:
        logger.warning(
            "joining %s over https without checking its certificate (--insecure-first-join)",
            master_url,
        )
        return False
    ca_pem = fetch_fleet_ca(master_url, False)
    _check_fingerprint(master_url, ca_pem, expected)
    return verified_channel(master_url, ca_pem, expected, cfg.api_ca_file)


def verified_channel(
    master_url: str, ca_pem: bytes, expected: str, api_ca_file: str
) -> ssl.SSLContext:
    """The first context that verifies the master's API (the fleet's CA, then api_ca_file if
    the operator gave one), /api/ca fetched again over it and checked: the fleet is bound by
    its fingerprint, the host by the certificate. No implicit public trust (certifi).

    Raises:
        ApiCertificateRefused: none verifies; MasterNotTrusted: another CA over a checked one.
        AuthError: api_ca_file cannot be read or holds no certificate.
    """
    candidates: list[tuple[str, Callable[[], ssl.SSLContext]]] = [
        ("the fleet CA", lambda: fleet_api_context(ca_pem)),
    ]
    if api_ca_file:
        candidates.append(
            (f"api_ca_file {api_ca_file}", lambda: file_api_context(Path(api_ca_file)))
        )
    problems: list[str] = []
    for label, make in candidates:
        ctx = make()
        try:
            again = fetch_fleet_ca(master_url, ctx)
        except ApiCertificateRefused as exc:
            problems.append(f"checked with {label}: {exc.args[1]}")
            continue
        _check_fingerprint(master_url, again, expected)
        return ctx
    raise ApiCertificateRefused(master_url, "; ".join(problems), JOIN_API_HINT)


def _check_fingerprint(master_url: str, ca_pem: bytes, expected: str) -> None:
    got = fingerprint(ca_pem)
    if got != expected:
        raise MasterNotTrusted(master_url, got, expected)


def check_plain_join(master_url: str, allowed: bool) -> None:
    """Refuse to send a join token over plain http to another host, unless `allowed`.

    Raises:
        ConfigError: naming https:// (and saying so when the master answers TLS there).
    """
    parts = urlsplit(master_url)
    if is_loopback(parts.hostname or ""):
        return
    if allowed:
        logger.warning(
            "joining %s over plain http (allow_plain_http_join / insecure_first_join): the join "
            "token crosses the network in clear",
            master_url,
        )
        return
    https_url = parts._replace(scheme="https").geturl()
    if answers_tls(parts.hostname or "", parts.port or 80):
        raise ConfigError(
            f"the master serves https: use --master {https_url} (the join token is not sent "
            f"over plain http to {master_url})"
        )
    raise ConfigError(
        f"the join token would cross the network in clear to {master_url}: use --master "
        f"{https_url} (a master on another host serves https by default), or set "
        "allow_plain_http_join (--allow-plain-http-join) only where nobody can read the traffic"
    )


def answers_tls(host: str, port: int) -> bool:
    """Whether host:port completes a TLS handshake (unchecked: only to word an error)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # noqa: S503 - nothing is sent, the answer only words an error
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as raw:
            with ctx.wrap_socket(raw, server_hostname=host or None):
                return True
    except (OSError, ssl.SSLError, ValueError):
        return False


def fetch_fleet_ca(master_url: str, verify: ssl.SSLContext | bool) -> bytes:
    """GET /api/ca: one certificate. Unchecked (verify=False), what it returns is checked by
    its fingerprint; checked, the answer is bound to the host too.

    Raises:
        JoinAnswerRefused: not a JSON object with one PEM certificate in ca_pem.
        ApiCertificateRefused: `verify` refused the master's certificate.
        MasterUnreachable: no answer, or not 200.
    """
    url = master_url.rstrip("/") + "/api/ca"
    try:
        response = httpx.get(url, verify=verify, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise join_error(master_url, exc) from exc
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
        return ApiCertificateRefused(master_url, why, JOIN_API_HINT)
    detail = str(exc).rstrip(".") or type(exc).__name__
    if urlsplit(master_url).scheme == "http" and isinstance(exc, httpx.RemoteProtocolError):
        detail += f" ({HTTPS_HINT})"
    return MasterUnreachable(master_url, detail)

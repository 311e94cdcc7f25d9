"""Certificate validity: when a node certificate stops being valid, and the errors and warnings that say so.

A node certificate is not renewed in place (its fingerprint is the node id, so a new one is a new
node): an agent whose certificate ran out joins again with a new join token. These helpers tell
the operator in time (a warning EXPIRY_WARNING_S ahead, repeated daily, and a figure the master's
monitoring shows), and name the date and the remedy when a certificate is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from cryptography import x509

from relaysync.errors import AuthError, CertificateExpired, CertificateNotYetValid

logger = logging.getLogger(__name__)

EXPIRY_WARNING_S = 30 * 86400  # a month ahead: time to re-join a node in a maintenance window
EXPIRY_CHECK_INTERVAL_S = 86400  # the warning comes again daily until the node is re-joined

REJOIN_AGENT = (
    "the agent must join the fleet again: stop it, delete its identity directory and start it "
    "with --token <a new join token> (relaysync token create-join)"
)
REPLACE_MASTER_CERT = (
    "stop the master, move {} away and start it (a new control certificate is made), then "
    "remove master_node_id from every agent's identity/master.json so that it pins the new one"
)
PEER_REMEDY = (
    "that node needs a new certificate: an agent joins the fleet again (stop it, delete its "
    "identity directory, start it with --token <a new join token>); the master's control "
    "certificate is replaced by moving its data dir's control/ away and restarting it"
)


def rejoin_remedy(identity_dir: Path) -> str:
    """The remedy for this agent's own certificate, naming its identity directory."""
    return (
        f"stop this agent, delete {identity_dir} and start it with --token <a new join token> "
        "(relaysync token create-join): a certificate cannot be renewed in place"
    )


def validity(cert: bytes) -> tuple[dt.datetime, dt.datetime]:
    """Return (not before, not after) of a certificate (PEM or DER), in UTC.

    Raises:
        AuthError: the bytes are not a certificate.
    """
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            parsed = x509.load_pem_x509_certificate(cert)
        else:
            parsed = x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise AuthError(f"not a certificate: {exc}") from exc
    return parsed.not_valid_before_utc, parsed.not_valid_after_utc


def format_time(when: dt.datetime) -> str:
    """A certificate date as an operator reads it: 2026-12-05 08:31:12 UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds_left(cert: bytes, *, now: dt.datetime | None = None) -> float:
    """Seconds until the certificate expires (negative once it has)."""
    return (validity(cert)[1] - (now or dt.datetime.now(dt.UTC))).total_seconds()


def check_current(cert: bytes, whose: str, remedy: str, *, now: dt.datetime | None = None) -> None:
    """Refuse a certificate outside its validity period.

    Args:
        whose: who holds it, as the message names it ("node t1 (ab12...) at 10.0.0.5:4100").
        remedy: what to do about an expired one.

    Raises:
        CertificateExpired: past its not-after date.
        CertificateNotYetValid: before its not-before date.
    """
    not_before, not_after = validity(cert)
    now = now or dt.datetime.now(dt.UTC)
    if now > not_after:
        raise CertificateExpired(whose, format_time(not_after), remedy)
    if now < not_before:
        raise CertificateNotYetValid(whose, format_time(not_before))


def log_expiry(cert: bytes, whose: str, remedy: str, *, warn_within_s: float) -> None:
    """Log an error for an expired certificate, a warning for one that expires soon."""
    left = seconds_left(cert)
    expires = format_time(validity(cert)[1])
    if left <= 0:
        logger.error("the certificate of %s expired on %s: %s", whose, expires, remedy)
    elif left <= warn_within_s:
        logger.warning(
            "the certificate of %s expires on %s, in %.1f days: %s before then",
            whose,
            expires,
            left / 86400,
            remedy,
        )


async def watch_expiry(
    cert_path: Path,
    whose: str,
    remedy: str,
    *,
    warn_within_s: float = EXPIRY_WARNING_S,
    interval_s: float = EXPIRY_CHECK_INTERVAL_S,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Check the certificate in `cert_path` now and every `interval_s`, until cancelled; a
    certificate that expires sooner is checked again right after it has.

    Error handling: an unreadable certificate is logged and checked again at the next round.
    """
    task_status.started()
    while True:
        delay_s = interval_s
        try:
            cert = await anyio.Path(cert_path).read_bytes()
            log_expiry(cert, whose, remedy, warn_within_s=warn_within_s)
            left = seconds_left(cert)
            if 0 < left < interval_s:
                delay_s = left + 1  # the error that every refused link is about, at once
        except (OSError, AuthError) as exc:
            logger.warning("cannot check the expiry of %s's certificate: %s", whose, exc)
        await anyio.sleep(delay_s)

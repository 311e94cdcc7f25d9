"""API trust: how a client (an agent joining, the operator CLI) checks the master's HTTPS API.

The fleet's CA also signs every node's certificate, each valid for its node's name and for
localhost: trusting that CA alone would let any member of the fleet answer in the master's place
(and read the admin token the CLI sends). A client that trusts a fleet CA therefore also requires
the master's own name (MASTER_NODE_NAME, which no node may join under) as the subject of the
certificate, checked right after the handshake, before a byte of the request is sent.

Which certificates need that name is decided by the certificate presented, not by what the
trust store holds: any certificate issued by a fleet CA (its issuer is named FLEET_CA_NAME; a
fleet CA signs no intermediate, path length 0) must be the master's, whatever else the CA file
(a bundle, a system store the fleet CA was added to) holds. An operator's own certificate
(api_tls = "files") is taken as its CA file or certifi's bundle says.

Error handling: `certificate_problem` finds a refused certificate behind an httpx error, so that
the caller raises ApiCertificateRefused (with its remedy) instead of a bare connection error.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from relaysync.constants import MASTER_NODE_NAME
from relaysync.errors import AuthError

FLEET_CA_NAME = "relaysync CA"  # the subject of every fleet CA (CertificateAuthority's default)


def _subject_name(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _issued_by_a_fleet_ca(der: bytes) -> bool:
    cert = x509.load_der_x509_certificate(der)
    issuers = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return any(str(attr.value) == FLEET_CA_NAME for attr in issuers)


def _check_fleet_certificate(der: bytes | None) -> None:
    """A verified certificate from a fleet CA must be the master's; any other passes as it is."""
    if der is None or _issued_by_a_fleet_ca(der):
        _check_master_name(der)


def _check_master_name(der: bytes | None) -> None:
    """Refuse a certificate (already verified against the fleet's CA) that is not the master's."""
    name = _subject_name(der) if der else ""
    if name != MASTER_NODE_NAME:
        err = ssl.SSLCertVerificationError(
            f"the certificate is issued to {name!r}, not to the master ({MASTER_NODE_NAME!r}): "
            "a node of the fleet is answering in the master's place"
        )
        err.verify_message = str(err.args[0])
        raise err


class _MasterSocket(ssl.SSLSocket):
    """A TLS socket (sync clients) that refuses a fleet certificate not issued to the master."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_master_name(self.getpeercert(binary_form=True))


class _MasterObject(ssl.SSLObject):
    """The same for TLS over memory BIOs (asyncio clients)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _check_master_name(self.getpeercert(binary_form=True))


class _FleetAwareSocket(ssl.SSLSocket):
    """A TLS socket that refuses a certificate from a fleet CA not issued to the master."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_fleet_certificate(self.getpeercert(binary_form=True))


class _FleetAwareObject(ssl.SSLObject):
    """The same for TLS over memory BIOs (asyncio clients)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _check_fleet_certificate(self.getpeercert(binary_form=True))


def is_fleet_ca(pem: bytes) -> bool:
    """Whether `pem` is one certificate alone: a relaysync fleet's CA."""
    from relaysync.auth.ca import one_certificate

    try:
        cert = x509.load_pem_x509_certificate(one_certificate(pem))
    except (AuthError, ValueError):
        return False
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(names) and names[0].value == FLEET_CA_NAME


def fleet_api_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts the fleet's CA alone, and the master's certificate alone.

    TLS 1.2 or later, the host name checked as usual.
    """
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _MasterSocket
    ctx.sslobject_class = _MasterObject
    return ctx


def file_api_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts the CA certificates in `ca_file`, a certificate from a
    fleet CA only if it is the master's (whatever else the file holds).

    Raises:
        AuthError: the file cannot be read or holds no usable certificate.
    """
    try:
        pem = ca_file.read_bytes()
    except OSError as exc:
        raise AuthError(f"CA file {ca_file}: {exc.strerror or exc}") from exc
    if is_fleet_ca(pem):
        return fleet_api_context(pem)
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, ValueError) as exc:
        raise AuthError(f"CA file {ca_file} holds no usable PEM certificate: {exc}") from exc
    return _fleet_aware(ctx)


def default_api_context() -> ssl.SSLContext:
    """What httpx's verify=True trusts (SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's
    bundle), a certificate from a fleet CA only if it is the master's."""
    import httpx

    return _fleet_aware(httpx.create_ssl_context(verify=True))


def _fleet_aware(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _FleetAwareSocket
    ctx.sslobject_class = _FleetAwareObject
    return ctx


def certificate_problem(exc: BaseException) -> str | None:
    """Why a certificate was refused, if that is what lies behind `exc` (None otherwise)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)
        cause = cause.__cause__ or cause.__context__
    return None

"""The certificate authority: the master's CA that gives every node its identity certificate.

A node is its certificate: its node id is the SHA-256 fingerprint of the certificate's DER.
Agents send a CSR when they join; the master signs it with the CA key kept in its data dir.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relaysync.constants import MASTER_MONITOR_NAME, MASTER_NODE_NAME
from relaysync.errors import AuthError, ConfigError, error_text

logger = logging.getLogger(__name__)

CA_VALIDITY_DAYS = 3650  # ten years: the CA outlives any node certificate it signs
NODE_VALIDITY_DAYS = 825  # the longest validity TLS clients still accept for leaf certificates
CLOCK_SKEW_S = 300  # certificates are valid from a little before now, for clocks slightly behind
KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"
# used with fullmatch: "^...$" with match() would take a name with a final newline
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# one PEM certificate and nothing else but white space (used with fullmatch)
_ONE_PEM_CERT_RE = re.compile(
    rb"\s*-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*"
)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def is_node_name(name: str) -> bool:
    """Whether `name` has the form of a node name (not whether it is reserved)."""
    return _NAME_RE.fullmatch(name) is not None


def check_node_name(name: str) -> None:
    """Refuse a node name that cannot be a certificate's DNS name, or that the master goes by.

    Raises:
        ConfigError: the name is empty, too long, has characters other than A-Z a-z 0-9 . _ -,
            or is reserved (in any case): MASTER_NODE_NAME, by which agents tell the master, or
            MASTER_MONITOR_NAME, under which monitoring keeps the master's own figures.
    """
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"node name {name!r} is not valid: use 1-63 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    if is_reserved_name(name):
        raise ConfigError(f"node name {name!r} is reserved for the master itself: choose another")


def is_master_name(name: str) -> bool:
    """True for the master's certificate name (DNS names are case-insensitive, so in any case)."""
    return name.lower() == MASTER_NODE_NAME


def is_reserved_name(name: str) -> bool:
    """True for a name no node may have: the master's certificate name or its monitoring name."""
    return name.lower() in (MASTER_NODE_NAME, MASTER_MONITOR_NAME)


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """Make a new EC P-256 key and a CSR for `name`.

    Returns:
        (key PEM, CSR PEM)
    """
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(name))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def _load_cert(cert: bytes) -> x509.Certificate:
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise AuthError(f"not a certificate: {exc}") from exc


def one_certificate(pem: bytes) -> bytes:
    """The one certificate a PEM text holds, serialised again: nothing else may be in the text.

    A TLS trust store (`cafile`) trusts every certificate in its file while `fingerprint` reads
    the first: whatever is checked and then saved must be that one certificate, no more.

    Raises:
        AuthError: more than one PEM block, another label than CERTIFICATE, other text around
            it, or bytes that are not a certificate.
    """
    blocks = pem.count(b"-----BEGIN")
    if blocks != 1:
        raise AuthError(f"{blocks} PEM blocks where exactly one certificate belongs")
    if not _ONE_PEM_CERT_RE.fullmatch(pem):
        raise AuthError("not a PEM certificate alone: another label, or other text around it")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AuthError(f"not a certificate: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: bytes) -> str:
    """Return the node id of a certificate: SHA-256 hex of its DER (PEM or DER accepted).

    Raises:
        AuthError: the bytes are not a certificate.
    """
    der = _load_cert(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def check_issued_to(cert_pem: bytes, ca_pem: bytes, key_pem: bytes) -> None:
    """Check that a certificate is signed by the CA and carries the public key of `key_pem`.

    Raises:
        AuthError: it is not, or one of them cannot be read.
    """
    cert, ca = _load_cert(cert_pem), _load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AuthError(f"certificate not issued by the CA: {error_text(exc)}") from exc
    if cert.public_key() != key.public_key():
        raise AuthError("the certificate is for another key")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its own mode through O_CREAT
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CertificateAuthority:
    """An EC P-256 CA whose key and certificate live in one directory (ca.key 0600, ca.pem)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert
        self.ca_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
        # what join strings carry: agents refuse a master whose CA has another one
        self.ca_fingerprint: str = fingerprint(self.ca_pem)

    @classmethod
    def load_or_create(cls, directory: Path, *, name: str = "relaysync CA") -> CertificateAuthority:
        """Load the CA from `directory`, or create it there on first use.

        A new CA is made only when both files are absent: with one of them missing (a partial
        restore, a deleted ca.pem) a new CA would overwrite the key that every node's certificate
        chains to, and lock the whole fleet out.

        Raises:
            AuthError: the files exist but cannot be read as a key and certificate, or only one
                of them exists.
        """
        directory = Path(directory)
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        if key_path.exists() and cert_path.exists():
            return cls._load(key_path, cert_path)
        if key_path.exists() or cert_path.exists():
            present, missing = (key_path, cert_path) if key_path.exists() else (cert_path, key_path)
            raise AuthError(
                f"CA file {missing} is missing but {present} exists: restore {missing.name} from "
                f"the backup of {directory} (a new CA would lock out every node it certified). To "
                f"start a new CA on purpose, move both files away and join every agent again"
            )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = cls._create(name)
        write_private(key_path, _key_pem(ca._key))
        write_public(cert_path, ca.ca_pem)
        logger.info("created certificate authority", extra={"directory": str(directory)})
        return ca

    @classmethod
    def _load(cls, key_path: Path, cert_path: Path) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise AuthError(f"cannot load CA from {key_path.parent}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthError(f"CA key {key_path} is not an EC key")
        return cls(key, cert)

    @classmethod
    def _create(cls, name: str) -> CertificateAuthority:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_subject(name))
            .issuer_name(_subject(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def sign_csr(self, csr_pem: bytes, *, name: str, days: int = NODE_VALIDITY_DAYS) -> bytes:
        """Sign a node's CSR: a certificate for `name` usable as TLS client and server.

        The subject and SANs come from `name`, never from the CSR; SANs also hold localhost and
        127.0.0.1 so that a node on loopback can serve its peers.

        Returns:
            the certificate PEM.

        Raises:
            AuthError: the CSR is malformed, its signature is bad, or its key is not EC on a
                curve TLS 1.3 signs with (CSR_CURVES).
            ConfigError: the name is not valid.
        """
        check_node_name(name)
        csr = _load_csr(csr_pem)
        hosts = [name, "localhost", "127.0.0.1"]
        return self._sign(csr.public_key(), name, hosts, days)

    def issue(self, name: str, hosts: Sequence[str]) -> tuple[bytes, bytes]:
        """Issue a new key and certificate for `name` valid for `hosts` (DNS names or IPs).

        Returns:
            (key PEM, certificate PEM)
        """
        key = _new_key()
        cert = self._sign(key.public_key(), name, [name, *hosts], NODE_VALIDITY_DAYS)
        return _key_pem(key), cert

    def _sign(self, public_key: object, name: str, hosts: Sequence[str], days: int) -> bytes:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(name))
            .issuer_name(self._cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# The curves TLS 1.3 signs with (RFC 8446 4.2.3): a node key on any other is refused.
CSR_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AuthError(f"malformed certificate signing request: {exc}") from exc
    if not valid:
        raise AuthError("certificate signing request has a bad signature")
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AuthError("certificate signing request must carry an EC key")
    if public_key.curve.name not in CSR_CURVES:
        # a weak or binary curve would be signed, then fail every TLS handshake obscurely
        raise AuthError(
            f"certificate signing request uses the EC curve {public_key.curve.name}; use one of "
            f"{', '.join(sorted(CSR_CURVES))} (a relaysync agent makes a secp256r1 key itself)"
        )
    return csr

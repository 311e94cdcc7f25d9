"""Node certificates with chosen dates, signed by a fleet's real CA (the master's data_dir/ca)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relaysync.auth.ca import CertificateAuthority
from relaysync.transfer import tls


def dated_identity(
    ca_dir: Path,
    directory: Path,
    name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    key_pem: bytes | None = None,
) -> tls.Identity:
    """An identity in `directory` whose certificate for `name` the CA in `ca_dir` signed with
    these dates (the CA itself is made there if absent: another fleet's); with `key_pem`, for
    that key (an agent's own, as if its certificate had aged)."""
    ca = CertificateAuthority.load_or_create(ca_dir)
    issuer_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    key = (
        serialization.load_pem_private_key(key_pem, None)
        if key_pem
        else ec.generate_private_key(ec.SECP256R1())
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.load_pem_x509_certificate(ca.ca_pem).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ident = tls.Identity.in_directory(directory)
    ident.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ident.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ident.ca_path.write_bytes(ca.ca_pem)
    return ident


def expired_identity(
    ca_dir: Path, directory: Path, name: str, *, days_ago: int = 2
) -> tls.Identity:
    """An identity whose certificate from the CA in `ca_dir` expired `days_ago` days ago."""
    now = dt.datetime.now(dt.UTC)
    return dated_identity(
        ca_dir,
        directory,
        name,
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=days_ago),
    )


def trusting(ident: tls.Identity, ca_pem_of: tls.Identity, directory: Path) -> tls.Identity:
    """`ident`'s key and certificate, trusting the CA that `ca_pem_of` trusts (a node of one
    fleet pointed at another fleet's peers)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = tls.Identity.in_directory(directory)
    shutil.copy(ident.key_path, out.key_path)
    shutil.copy(ident.cert_path, out.cert_path)
    shutil.copy(ca_pem_of.ca_path, out.ca_path)
    return out

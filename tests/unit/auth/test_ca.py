"""The certificate authority signs node CSRs into certificates that chain to it."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relaysync.auth.ca import CertificateAuthority, fingerprint, is_master_name, make_key_and_csr
from relaysync.errors import AuthError, ConfigError


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def test_files_are_created_with_private_key_mode(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3649


def test_reload_gives_the_same_ca(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    second = CertificateAuthority.load_or_create(tmp_path)
    assert first.ca_pem == second.ca_pem


@pytest.mark.parametrize(("lost", "kept"), [("ca.pem", "ca.key"), ("ca.key", "ca.pem")])
def test_a_ca_with_one_file_missing_is_refused_not_replaced(
    tmp_path: Path, lost: str, kept: str
) -> None:
    """A partial restore (or a deleted ca.pem) must not make a new CA: it would overwrite the key
    every node's certificate chains to and lock the whole fleet out."""
    CertificateAuthority.load_or_create(tmp_path / "ca")
    before = (tmp_path / "ca" / kept).read_bytes()
    (tmp_path / "ca" / lost).unlink()
    with pytest.raises(
        AuthError, match=f"CA file .*{lost} is missing but .*{kept} exists: restore {lost}"
    ):
        CertificateAuthority.load_or_create(tmp_path / "ca")
    assert (tmp_path / "ca" / kept).read_bytes() == before
    assert not (tmp_path / "ca" / lost).exists()


def test_signed_csr_chains_to_ca(ca: CertificateAuthority) -> None:
    key_pem, csr_pem = make_key_and_csr("web-1")
    cert_pem = ca.sign_csr(csr_pem, name="web-1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_pem)
    cert.verify_directly_issued_by(ca_cert)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"web-1", "localhost"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_fingerprint_is_sha256_of_der_from_pem_or_der(ca: CertificateAuthority) -> None:
    cert_pem = ca.sign_csr(make_key_and_csr("n1")[1], name="n1")
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert fingerprint(cert_pem) == fingerprint(der) == hashlib.sha256(der).hexdigest()
    assert len(fingerprint(der)) == 64


def test_fingerprint_of_garbage_is_refused() -> None:
    with pytest.raises(AuthError):
        fingerprint(b"not a certificate")


@pytest.mark.parametrize(
    "csr",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_csr_is_refused(ca: CertificateAuthority, csr: bytes) -> None:
    with pytest.raises(AuthError, match="malformed"):
        ca.sign_csr(csr, name="n1")


def test_csr_with_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(AuthError):
        ca.sign_csr(tampered, name="n1")


def test_csr_with_rsa_key_is_refused(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(AuthError, match="EC key"):
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), name="n1")


@pytest.mark.parametrize("name", ["", "bad name", "-x", "x" * 64, "ünï"])
def test_bad_node_name_is_refused(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(ConfigError, match="node name"):
        ca.sign_csr(make_key_and_csr("n1")[1], name=name)


def test_issue_for_master_control_server(ca: CertificateAuthority) -> None:
    key_pem, cert_pem = ca.issue("master", ["127.0.0.1", "master.example", "::1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ca_pem))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"master", "master.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize("name", ["relaysync-master", "RelaySync-Master"])
def test_the_masters_name_is_reserved(ca: CertificateAuthority, name: str) -> None:
    """Agents that joined before the master's node id was pinned tell the master by this name."""
    _key, csr = make_key_and_csr(name)
    with pytest.raises(ConfigError, match="reserved for the master"):
        ca.sign_csr(csr, name=name)
    assert not is_master_name("relaysync-master-2")


def _csr_on(curve: ec.EllipticCurve) -> bytes:
    """A CSR for "n1" whose key is on `curve`."""
    key = ec.generate_private_key(curve)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("curve", [ec.SECP192R1(), ec.SECP256K1(), ec.BrainpoolP256R1()])
def test_csr_on_a_curve_tls_does_not_sign_with_is_refused(
    ca: CertificateAuthority, curve: ec.EllipticCurve
) -> None:
    """Signed, such a certificate fails every handshake later with an obscure TLS error."""
    with pytest.raises(AuthError, match=f"curve {curve.name}"):
        ca.sign_csr(_csr_on(curve), name="n1")


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_csr_on_the_other_tls_curves_is_signed(
    ca: CertificateAuthority, curve: ec.EllipticCurve
) -> None:
    assert b"BEGIN CERTIFICATE" in ca.sign_csr(_csr_on(curve), name="n1")

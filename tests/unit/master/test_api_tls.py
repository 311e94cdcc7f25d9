"""master/api_tls.py: which listen addresses get HTTPS, and the fleet certificate's renewal."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from relaysync.auth.ca import CertificateAuthority, check_issued_to
from relaysync.config.schema import MasterConfig
from relaysync.constants import MASTER_NODE_NAME
from relaysync.errors import ConfigError, PlainApiRefused
from relaysync.master import api_tls
from relaysync.master.api_tls import (
    api_names,
    decide_mode,
    ensure_fleet_certificate,
    fleet_names,
    reissue_reason,
)


def _cfg(listen: str, **extra: object) -> MasterConfig:
    return MasterConfig(data_dir="/unused", listen=listen, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listen", "mode"),
    [
        ("127.0.0.1:8470", "off"),
        ("localhost:8470", "off"),
        ("[::1]:8470", "off"),
        ("0.0.0.0:8470", "fleet"),
        ("10.1.2.3:8470", "fleet"),
        ("master.example:8470", "fleet"),
    ],
)
def test_auto_is_plain_http_on_loopback_only(listen: str, mode: str) -> None:
    assert decide_mode(_cfg(listen)) == mode


def test_plain_http_on_a_network_address_is_refused_unless_insecure_http_is_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(PlainApiRefused) as refused:
        decide_mode(_cfg("0.0.0.0:8470", api_tls="off"))
    assert refused.value.exit_code == 20 and "api_insecure_http = true" in str(refused.value)
    with caplog.at_level(logging.WARNING):
        assert decide_mode(_cfg("0.0.0.0:8470", api_tls="off", api_insecure_http=True)) == "off"
    assert "in clear" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert decide_mode(_cfg("127.0.0.1:8470", api_tls="off")) == "off"
    assert caplog.text == ""  # loopback: nothing to warn about


def test_files_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="api_cert_file and api_key_file"):
        decide_mode(_cfg("0.0.0.0:8470", api_tls="files", api_cert_file="/c.pem"))


def test_the_fleet_names_on_every_interface_are_the_loopback_ones_not_0_0_0_0() -> None:
    names = fleet_names("0.0.0.0", "Master.Example, 10.0.0.5")
    assert "0.0.0.0" not in names
    assert {"master.example", "10.0.0.5", "localhost", "127.0.0.1", "::1"} <= set(names)
    assert socket.gethostname().lower() in names
    assert fleet_names("10.0.0.5", "")[0] == "10.0.0.5"


def _sans(cert: Path) -> set[str]:
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }


def test_the_fleet_certificate_is_made_once_and_again_when_its_names_change(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert, key = ensure_fleet_certificate(ca, tmp_path / "api", ["127.0.0.1", "m1"])
    assert key.stat().st_mode & 0o777 == 0o600
    check_issued_to(cert.read_bytes(), ca.ca_pem, key.read_bytes())
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()
    assert subject == f"CN={MASTER_NODE_NAME}"  # a name no node can join under
    assert _sans(cert) == {MASTER_NODE_NAME, "127.0.0.1", "m1"}
    first = cert.read_bytes()

    ensure_fleet_certificate(ca, tmp_path / "api", ["127.0.0.1", "m1"])
    assert cert.read_bytes() == first  # nothing changed: kept

    ensure_fleet_certificate(ca, tmp_path / "api", ["127.0.0.1", "m1", "master.example"])
    assert cert.read_bytes() != first
    assert _sans(cert) == {MASTER_NODE_NAME, "127.0.0.1", "m1", "master.example"}
    check_issued_to(cert.read_bytes(), ca.ca_pem, key.read_bytes())
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == ["api.key", "api.pem"]


def test_a_certificate_expiring_within_30_days_or_from_another_ca_is_issued_again(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert, key = ensure_fleet_certificate(ca, tmp_path / "api", ["127.0.0.1"])
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    soon = ca._sign(private.public_key(), MASTER_NODE_NAME, ["127.0.0.1"], 20)
    cert.write_bytes(soon)
    assert reissue_reason(ca, cert, key, ["127.0.0.1"]).startswith("it expires on")
    ensure_fleet_certificate(ca, tmp_path / "api", ["127.0.0.1"])
    assert reissue_reason(ca, cert, key, ["127.0.0.1"]) == ""

    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    assert reissue_reason(other, cert, key, ["127.0.0.1"]).startswith("not usable")
    ensure_fleet_certificate(other, tmp_path / "api", ["127.0.0.1"])
    check_issued_to(cert.read_bytes(), other.ca_pem, key.read_bytes())


class _Addr:
    def __init__(self, family: int, address: str) -> None:
        self.family, self.address = family, address


def test_on_every_interface_the_machines_addresses_are_names_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents given --master https://<the master's IP> must find it in the certificate."""
    fake = {
        "lo": [_Addr(socket.AF_INET, "127.0.0.1")],
        "eth0": [
            _Addr(socket.AF_INET, "10.9.9.9"),
            _Addr(socket.AF_INET6, "2001:db8::7"),
            _Addr(socket.AF_INET6, "fe80::1%eth0"),  # link-local: no URL can use it bare
            _Addr(socket.AF_PACKET, "00:11:22:33:44:55"),
        ],
    }
    monkeypatch.setattr(api_tls.psutil, "net_if_addrs", lambda: fake)
    names = fleet_names("0.0.0.0", "")
    assert {"10.9.9.9", "2001:db8::7", "127.0.0.1", "::1", "localhost"} <= set(names)
    assert "fe80::1" not in names and "00:11:22:33:44:55" not in names
    assert "10.9.9.9" not in fleet_names("10.1.2.3", "")  # a given listen address only


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.0.0.5:8470", "host:port"),
        ("[fe80::1]", "bracketed"),
        ("https://master.example", "URL"),
        ("bad_name!", "not a DNS name"),
        ("-x.example", "not a DNS name"),
    ],
)
def test_api_names_that_no_certificate_name_can_be_are_refused_at_once(
    entry: str, why: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        decide_mode(_cfg("0.0.0.0:8470", api_names=f"ok.example, {entry}"))
    assert repr(entry) in str(refused.value) and why in str(refused.value)


def test_api_names_take_ip_addresses_and_idna_names() -> None:
    names = api_names(" Bücher.Example , 10.0.0.5, 2001:DB8::1 ,")
    assert names == ["xn--bcher-kva.example", "10.0.0.5", "2001:db8::1"]


def test_the_key_is_0600_over_a_leftover_temp_file_and_at_every_start(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    directory = tmp_path / "api"
    directory.mkdir()
    leftover = directory / ".api.key.tmp"
    leftover.write_bytes(b"")
    leftover.chmod(0o644)
    _, key = ensure_fleet_certificate(ca, directory, ["m.example"])
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    ensure_fleet_certificate(ca, directory, ["m.example"])  # nothing to reissue
    assert key.stat().st_mode & 0o777 == 0o600


def test_an_api_name_with_an_ipv6_zone_is_refused_with_the_address_to_give() -> None:
    with pytest.raises(ConfigError) as refused:
        decide_mode(_cfg("0.0.0.0:8470", api_names="fe80::1%eth0"))
    message = str(refused.value)
    assert "'fe80::1%eth0'" in message and "zone" in message and "give fe80::1 alone" in message


def test_a_listen_host_with_an_ipv6_zone_does_not_reissue_at_every_start(
    tmp_path: Path,
) -> None:
    """The certificate holds fe80::1 (no zone): the names asked for must say the same."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    names = fleet_names("[fe80::1%eth0]", "2001:db8::1")
    assert "fe80::1" in names and not any("%" in n for n in names)
    cert, key = ensure_fleet_certificate(ca, tmp_path / "api", names)
    assert reissue_reason(ca, cert, key, fleet_names("[fe80::1%eth0]", "2001:db8::1")) == ""


def test_the_start_line_names_what_other_hosts_may_reach_the_master_by(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    names = ["master.example", "localhost", "127.0.0.1", "::1", "10.9.9.9"]
    cert, key = ensure_fleet_certificate(ca, tmp_path / "api", names)
    described = api_tls.ApiTls("fleet", cert, key).describe()
    assert described.startswith("fleet certificate, expires ")
    assert described.endswith(", for master.example, 10.9.9.9")
    many = [f"10.0.0.{i}" for i in range(1, api_tls.SHOWN_NAMES + 4)]
    cert, key = ensure_fleet_certificate(ca, tmp_path / "many", many)
    assert api_tls.ApiTls("fleet", cert, key).describe().endswith(" and 3 more")
    cert, key = ensure_fleet_certificate(ca, tmp_path / "lo", ["localhost", "127.0.0.1"])
    assert api_tls.ApiTls("fleet", cert, key).describe().endswith("for loopback names only")

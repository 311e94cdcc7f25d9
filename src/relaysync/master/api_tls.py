"""API TLS: whether the master's REST API and console serve HTTPS, and with which certificate.

MasterConfig.api_tls: "fleet" serves a certificate the master issues itself from the fleet's CA
(data_dir/api/api.pem, made again at start when missing, expiring within EXPIRY_WARNING_S, not
from this CA, or when its names changed); "files" serves the operator's own; "off" plain HTTP;
"auto" is "off" on a loopback listen address and "fleet" on any other. Plain HTTP on an address
other hosts reach is refused (PlainApiRefused) unless api_insecure_http is set, and then warned
about at every start: admin and join tokens would cross the network in clear.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from cryptography import x509

from relaysync._util.addresses import MAX_HOSTNAME, is_loopback, is_unspecified
from relaysync.auth.ca import CertificateAuthority, check_issued_to, write_private, write_public
from relaysync.auth.validity import EXPIRY_WARNING_S, format_time, seconds_left, validity
from relaysync.config.load import split_address
from relaysync.config.schema import MasterConfig
from relaysync.constants import MASTER_NODE_NAME
from relaysync.errors import AuthError, ConfigError, PlainApiRefused

logger = logging.getLogger(__name__)

Mode = Literal["fleet", "files", "off"]
CERT_FILE, KEY_FILE = "api.pem", "api.key"  # in data_dir/api, for api_tls = "fleet"
SHOWN_NAMES = 12  # at most this many of the certificate's names in the start line
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class ApiTls:
    """How the API is served: its mode, and for HTTPS the certificate and key files."""

    mode: Mode
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "http" if self.mode == "off" else "https"

    def uvicorn_options(self) -> dict[str, Any]:
        """ssl_certfile/ssl_keyfile for uvicorn.Config (nothing for plain HTTP)."""
        if self.cert_file is None or self.key_file is None:
            return {}
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}

    def describe(self) -> str:
        """What the start log says of it: "fleet certificate, expires 2028-..., for
        master.example, 10.0.0.5", "plain HTTP" (the names other hosts may use, loopback ones
        left out)."""
        if self.cert_file is None:
            return "plain HTTP"
        kind = "fleet certificate" if self.mode == "fleet" else f"certificate {self.cert_file}"
        try:
            cert_pem = self.cert_file.read_bytes()
            expires = format_time(validity(cert_pem)[1])
            names = _remote_names(cert_pem)
        except (OSError, ValueError, AuthError):
            return kind
        covers = f", for {_listed(names)}" if names else ", for loopback names only"
        return f"{kind}, expires {expires}{covers}"


def decide_mode(cfg: MasterConfig) -> Mode:
    """The mode `cfg` asks for, "auto" resolved by the listen address.

    Raises:
        PlainApiRefused: plain HTTP on a listen address other hosts reach, without
            api_insecure_http.
        ConfigError: "files" without api_cert_file and api_key_file.
    """
    host, _ = split_address(cfg.listen)
    mode: Mode = ("off" if is_loopback(host) else "fleet") if cfg.api_tls == "auto" else cfg.api_tls
    if mode == "off" and not is_loopback(host):
        if not cfg.api_insecure_http:
            raise PlainApiRefused(cfg.listen)
        logger.warning(
            "the REST API listens on %s in plain HTTP (api_insecure_http): admin and join tokens "
            "cross the network in clear unless something in front of it gives TLS",
            cfg.listen,
            extra={"listen": cfg.listen, "api_tls": "off"},
        )
    if mode == "files" and not (cfg.api_cert_file and cfg.api_key_file):
        raise ConfigError('api_tls = "files" needs both api_cert_file and api_key_file')
    api_names(cfg.api_names)  # refused now, before anything is made
    return mode


def api_names(value: str) -> list[str]:
    """The comma-separated api_names, each an IP address or a DNS name (IDNA-encoded).

    Raises:
        ConfigError: naming an entry that is a URL, a host:port, a bracketed address, or no name.
    """
    return [_api_name(entry.strip()) for entry in value.split(",") if entry.strip()]


def _api_name(entry: str) -> str:
    try:
        ip = ipaddress.ip_address(entry)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            raise ConfigError(
                f"api_names entry {entry!r} has a zone (%{ip.scope_id}), which a certificate "
                f"cannot hold: give {_without_zone(entry)} alone"
            )
        return str(ip)
    if "://" in entry or "/" in entry:
        why = "a URL: give its host alone"
    elif entry.startswith("["):
        why = "a bracketed address: give the IP address alone, without brackets or port"
    elif ":" in entry:
        why = "a host:port: give the host alone (the certificate holds no port)"
    else:
        try:
            name = entry.encode("idna").decode("ascii").lower().rstrip(".")
        except UnicodeError as exc:
            raise ConfigError(f"api_names entry {entry!r} is not a DNS name ({exc})") from exc
        labels = name.split(".")
        if name and len(name) <= MAX_HOSTNAME and all(_DNS_LABEL.fullmatch(x) for x in labels):
            return name
        why = "not a DNS name (letters, digits and hyphens in dot-separated labels)"
    raise ConfigError(f"api_names entry {entry!r} is {why}")


def prepare(cfg: MasterConfig, mode: Mode, ca: CertificateAuthority, data_dir: Path) -> ApiTls:
    """Have the certificate of `mode` (decide_mode's) ready: made or renewed for "fleet".

    Raises:
        ConfigError: api_tls = "files" with files that cannot serve TLS.
    """
    if mode == "off":
        return ApiTls("off")
    if mode == "files":
        cert, key = Path(cfg.api_cert_file), Path(cfg.api_key_file)
        _check_loadable(cert, key)
        return ApiTls("files", cert, key)
    host, _ = split_address(cfg.listen)
    cert, key = ensure_fleet_certificate(ca, data_dir / "api", fleet_names(host, cfg.api_names))
    return ApiTls("fleet", cert, key)


def _check_loadable(cert: Path, key: Path) -> None:
    """Refuse at start, with the files' names, a pair uvicorn would fail on later."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"api_cert_file {cert} with api_key_file {key}: {exc}") from exc


def fleet_names(listen_host: str, names: str) -> list[str]:
    """The names the fleet certificate is for: the listen host (or, on every interface, this
    machine's addresses, loopback ones included), its host name, and api_names."""
    every = is_unspecified(listen_host)
    found = [] if every else [listen_host.strip("[]")]
    found.append(socket.gethostname())
    found += api_names(names)
    if every:
        found += ["localhost", "127.0.0.1", "::1", *local_addresses()]
    return [_normalised(n) for n in dict.fromkeys(found)]


def local_addresses() -> list[str]:
    """This machine's interface addresses, link-local ones left out (a URL cannot use them
    without a zone): what agents may reach a master listening on every interface by."""
    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(addr.address.split("%")[0])
            except ValueError:
                continue
            if not ip.is_link_local:
                found.append(str(ip))
    return sorted(set(found))


def _normalised(name: str) -> str:
    """An address as the certificate stores it (no zone: a listen host may have one), a name
    in lower case."""
    try:
        return _without_zone(name)
    except ValueError:
        return name.lower()


def _without_zone(address: str) -> str:
    """The IP address `address` without its IPv6 zone (fe80::1%eth0 -> fe80::1).

    Raises:
        ValueError: not an IP address.
    """
    return str(ipaddress.ip_address(address.split("%", 1)[0]))


def ensure_fleet_certificate(
    ca: CertificateAuthority, directory: Path, names: list[str]
) -> tuple[Path, Path]:
    """The API certificate in `directory`, issued again by `ca` when it is due (`reissue_reason`).

    The key is written 0600, each file whole (temp file + rename), the key first: a crash
    between the two leaves a certificate for another key, which the next start replaces.

    Returns:
        (certificate path, key path)
    """
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    reason = reissue_reason(ca, cert_path, key_path, names)
    if reason:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem, cert_pem = ca.issue(MASTER_NODE_NAME, names)
        write_private(key_path, key_pem)
        write_public(cert_path, cert_pem)
        logger.info(
            "issued the API's certificate from the fleet CA (%s) for %s",
            reason,
            ", ".join(names),
            extra={"cert_file": str(cert_path), "names": names},
        )
    else:
        os.chmod(key_path, 0o600)  # kept: whatever mode it was given since, only we read it
    return cert_path, key_path


def reissue_reason(
    ca: CertificateAuthority, cert_path: Path, key_path: Path, names: list[str]
) -> str:
    """Why the certificate in cert_path must be issued again ("" if it need not)."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return "none yet"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    try:
        check_issued_to(cert_pem, ca.ca_pem, key_pem)
        left_s = seconds_left(cert_pem)
    except AuthError as exc:
        return f"not usable with this CA: {exc}"
    if left_s < EXPIRY_WARNING_S:
        return f"it expires on {format_time(validity(cert_pem)[1])}"
    if _names_in(cert_pem) != {_normalised(n) for n in [MASTER_NODE_NAME, *names]}:
        return "its names changed"
    return ""


def _names_in(cert_pem: bytes) -> set[str]:
    return set(_san_list(cert_pem))


def _san_list(cert_pem: bytes) -> list[str]:
    """The certificate's DNS names (lower case) then IP addresses, in its order."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [n.lower() for n in sans.get_values_for_type(x509.DNSName)]
    return dns + [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def _remote_names(cert_pem: bytes) -> list[str]:
    """The certificate's names another host may reach the master by (not loopback, not the
    master's node name)."""
    return [n for n in _san_list(cert_pem) if n != MASTER_NODE_NAME.lower() and not is_loopback(n)]


def _listed(names: list[str], most: int = SHOWN_NAMES) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"

"""Enrollment: an agent joins the fleet with a token, and keeps where and who its master is.

The first join is checked: the join string carries the SHA-256 fingerprint of the fleet's CA
(or the operator gives it with --ca-fingerprint), and an answer with another CA is refused
before anything is saved, so whoever answers at the master's URL in its place gets no say in
whom the agent trusts. A bare token needs --insecure-first-join (trust whoever answers).

The join reply gives the node's certificate, the fleet's CA, the master's control address and
the fingerprint of the master's control certificate (`master_node_id`); all of it is kept beside
the node's key, the master's part in `master.json`. The control link connects to that node id
only. A `master.json` written by an older release has no `master_node_id`: the link then takes
the first control server whose certificate (from the fleet's CA) is named MASTER_NODE_NAME, a
name no agent may join under, and saves its fingerprint here (`pin_master`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relaysync._util.addresses import is_unspecified, join_address
from relaysync.auth.tokens import normalize_fingerprint, split_join_string
from relaysync.config.load import split_address
from relaysync.config.schema import AgentConfig
from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import (
    AuthError,
    ConfigError,
    JoinRefused,
    MasterNotTrusted,
    MasterUnreachable,
)
from relaysync.transfer import tls

logger = logging.getLogger(__name__)

MASTER_FILE = "master.json"  # beside the identity: control_address, master_url, master_node_id


@dataclass(frozen=True)
class MasterPin:
    """Where the master's control server is, and who it must be."""

    control_address: str
    node_id: (
        str | None
    )  # its certificate's fingerprint; None: not known yet (joined before pinning)


def expected_ca_fingerprint(cfg: AgentConfig) -> tuple[str, str | None]:
    """The join token to send, and the fingerprint the master's CA must have (None: any).

    Raises:
        ConfigError: the join string is malformed, it and --ca-fingerprint disagree, or
            neither names the CA and --insecure-first-join was not given.
    """
    token, in_string = split_join_string(cfg.token)
    given = normalize_fingerprint(cfg.ca_fingerprint) if cfg.ca_fingerprint else None
    if in_string and given and in_string != given:
        raise ConfigError(
            "the join string and --ca-fingerprint name different CAs: give one of them, the "
            "one from the master you mean to join"
        )
    expected = in_string or given
    if expected is None and not cfg.insecure_first_join:
        raise ConfigError(
            "the join token names no CA, so this agent cannot tell the master from whoever "
            "answers at --master: give the join string `relaysync token create-join` prints (or "
            "the master's data_dir/join-token file), or add --ca-fingerprint with the SHA-256 of "
            "the master's data_dir/ca/ca.pem (`openssl x509 -noout -fingerprint -sha256 -in "
            "ca.pem`), or --insecure-first-join to trust whichever master answers"
        )
    return token, expected


def join(cfg: AgentConfig, identity: tls.Identity) -> MasterPin:
    """Join the fleet with the token: get a certificate from the master's CA.

    The master's CA must have the fingerprint the join string (or --ca-fingerprint) names;
    nothing is saved otherwise. With --insecure-first-join and a bare token, any CA is taken.

    Returns:
        the master's control address and, from a master that tells it, its node id.

    Raises:
        ConfigError: no CA fingerprint to check the master with (expected_ca_fingerprint).
        JoinRefused: the master refused the token or the request.
        MasterNotTrusted: the master's CA is not the one the join string names.
        MasterUnreachable: the master did not answer.
    """
    from relaysync.auth.ca import make_key_and_csr

    token, expected = expected_ca_fingerprint(cfg)
    key_pem, csr_pem = make_key_and_csr(cfg.name)
    body = _post_join(cfg, token, expected, csr_pem)
    _check_master(cfg.master_url, body, expected, key_pem)
    identity.key_path.parent.mkdir(parents=True, exist_ok=True)
    identity.key_path.write_bytes(key_pem)
    identity.key_path.chmod(0o600)
    identity.ca_path.write_bytes(body["ca_pem"].encode())
    identity.cert_path.write_bytes(body["cert_pem"].encode())
    pin = MasterPin(
        control_address=str(body["control_address"]), node_id=body.get("master_node_id") or None
    )
    _write_master_file(
        identity,
        {
            "control_address": pin.control_address,
            "master_url": cfg.master_url,
            "master_node_id": pin.node_id,
        },
    )
    logger.info("joined the fleet as %s (node %s)", cfg.name, body["node_id"][:16])
    return pin


def _post_join(
    cfg: AgentConfig, token: str, expected: str | None, csr_pem: bytes
) -> dict[str, Any]:
    """POST /api/join; the CA we expect goes along, so that a master of another fleet refuses
    before it takes our name (an older master ignores it: we check its answer anyway)."""
    import httpx  # only at the first start: keeps the resident agent lighter

    url = cfg.master_url.rstrip("/") + "/api/join"
    sent = {"token": token, "name": cfg.name, "csr_pem": csr_pem.decode()}
    try:
        response = httpx.post(
            url, json=sent | {"ca_fingerprint": expected or ""}, timeout=HTTP_TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        raise MasterUnreachable(cfg.master_url, exc) from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:200] or response.status_code
        raise JoinRefused(detail)
    try:
        return dict(response.json())
    except ValueError as exc:
        raise JoinRefused(f"the answer is not JSON: {response.text[:200]!r}") from exc


def _check_master(
    master_url: str, body: dict[str, Any], expected: str | None, key_pem: bytes
) -> None:
    """The answer's CA is the expected one, and its certificate is ours, signed by that CA.

    Raises:
        MasterNotTrusted: another CA.
        JoinRefused: a certificate that is not ours, or not signed by the CA.
    """
    from relaysync.auth.ca import check_issued_to, fingerprint

    try:
        ca_pem, cert_pem = body["ca_pem"].encode(), body["cert_pem"].encode()
        got = fingerprint(ca_pem)
    except (KeyError, AttributeError, AuthError) as exc:
        raise JoinRefused(f"the answer has no usable CA certificate ({exc})") from exc
    if expected is not None and got != expected:
        raise MasterNotTrusted(master_url, got, expected)
    if expected is None:
        logger.warning(
            "joined without checking the master's CA (--insecure-first-join): trusting CA %s "
            "from %s from now on",
            got,
            master_url,
        )
    try:
        check_issued_to(cert_pem, ca_pem, key_pem)
    except AuthError as exc:
        raise JoinRefused(f"the certificate in the answer is not usable: {exc}") from exc


def reachable_control_address(control_address: str, master_url: str) -> str:
    """The master's control address as this agent can reach it: a master whose control server
    listens on every interface (0.0.0.0) reports that; the agent then uses the host it reaches
    the master's API at."""
    host, port = split_address(control_address)
    api_host = urlsplit(master_url).hostname
    if is_unspecified(host) and api_host:
        return join_address(api_host, port)
    return control_address


def _write_master_file(identity: tls.Identity, saved: dict[str, object]) -> None:
    path = identity.key_path.parent / MASTER_FILE
    tmp = path.with_name(f".{MASTER_FILE}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in saved.items() if v is not None}))
    tmp.replace(path)


def read_master_file(identity: tls.Identity) -> MasterPin:
    saved = json.loads((identity.key_path.parent / MASTER_FILE).read_text())
    return MasterPin(
        control_address=str(saved["control_address"]), node_id=saved.get("master_node_id") or None
    )


def pin_master(identity: tls.Identity, node_id: str) -> None:
    """Save the master's node id into a master.json written before joins returned it."""
    path = identity.key_path.parent / MASTER_FILE
    saved = json.loads(path.read_text())
    saved["master_node_id"] = node_id
    _write_master_file(identity, saved)

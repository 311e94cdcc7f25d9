"""Enrollment: an agent joins the fleet with a token, and keeps where and who its master is.

The first join is checked: the join string carries the SHA-256 fingerprint of the fleet's CA
(or the operator gives it with --ca-fingerprint), and an answer with another CA is refused
before anything is saved, so whoever answers at the master's URL in its place gets no say in
whom the agent trusts. A bare token needs --insecure-first-join (trust whoever answers). The
answer's CA and certificate must each be one PEM certificate alone (the trust store would take
a CA appended to the fleet's), every field is checked before anything is written, and the
identity is renamed into place whole: an agent has a whole identity or none.

Over https the fleet's CA is fetched and checked by its fingerprint before the token is sent,
and the join request checks the master's certificate against that CA (_join_trust.py).

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
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
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
    IdentityUnusable,
    JoinAnswerRefused,
    MasterNotTrusted,
)
from relaysync.transfer import tls
from relaysync.transfer.staging import fsync_dir

logger = logging.getLogger(__name__)

MASTER_FILE = "master.json"  # beside the identity: control_address, master_url, master_node_id
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")  # a node id: SHA-256 hex of a certificate's DER


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
    Every field of the answer is checked before anything is written, and the identity is
    written whole or not at all (`_save_identity`).

    Returns:
        the master's control address and, from a master that tells it, its node id.

    Raises:
        ConfigError: no CA fingerprint to check the master with (expected_ca_fingerprint).
        IdentityUnusable: the identity directory holds what an interrupted join left.
        JoinRefused: the master refused the token.
        ConfigError: the master refused the name (taken, or not one it takes).
        CsrRefused: the master refused the certificate request.
        JoinAnswerRefused: an answer that is malformed, not the master's (a proxy's 409...),
            or whose certificate is not ours.
        MasterNotTrusted: the master's CA is not the one the join string names.
        ApiCertificateRefused: the master's https certificate is not the master's from that CA.
        MasterUnreachable: the master did not answer.
    """
    from relaysync.auth.ca import make_key_and_csr

    token, expected = expected_ca_fingerprint(cfg)
    _refuse_leftovers(identity)
    key_pem, csr_pem = make_key_and_csr(cfg.name)
    body = _post_join(cfg, token, expected, csr_pem)
    answer = _check_answer(cfg.master_url, body, expected, key_pem)
    _save_identity(identity, key_pem, answer, cfg.master_url)
    logger.info("joined the fleet as %s (node %s)", cfg.name, answer.node_id[:16])
    return answer.pin


@dataclass(frozen=True)
class _Answer:
    """A join answer, checked: the certificates as serialised again from what was checked."""

    ca_pem: bytes
    cert_pem: bytes
    node_id: str
    pin: MasterPin


def _post_join(
    cfg: AgentConfig, token: str, expected: str | None, csr_pem: bytes
) -> dict[str, Any]:
    """POST /api/join; the CA we expect goes along, so that a master of another fleet refuses
    before it takes our name (an older master ignores it: we check its answer anyway)."""
    import httpx  # only at the first start: keeps the resident agent lighter

    from relaysync.agent._join_refusal import join_refusal
    from relaysync.agent._join_trust import join_error, join_verify

    verify = join_verify(cfg, expected)  # over https: the CA checked before the token
    url = cfg.master_url.rstrip("/") + "/api/join"
    sent = {"token": token, "name": cfg.name, "csr_pem": csr_pem.decode()}
    try:
        response = httpx.post(
            url,
            json=sent | {"ca_fingerprint": expected or ""},
            timeout=HTTP_TIMEOUT_S,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        raise join_error(cfg.master_url, exc) from exc
    if response.status_code != 200:
        raise join_refusal(cfg.master_url, cfg.name, response.status_code, response.text)
    try:
        answer = response.json()
    except ValueError as exc:
        raise JoinAnswerRefused(cfg.master_url, f"not JSON: {response.text[:200]!r}") from exc
    if not isinstance(answer, dict):
        raise JoinAnswerRefused(cfg.master_url, "not a JSON object")
    return answer


def _check_answer(
    master_url: str, body: dict[str, Any], expected: str | None, key_pem: bytes
) -> _Answer:
    """The answer's CA is the expected one, alone; its certificate is ours, signed by that CA,
    alone; the other fields are what a master sends.

    Raises:
        MasterNotTrusted: another CA.
        JoinAnswerRefused: anything else wrong with the answer.
    """
    from relaysync.auth.ca import check_issued_to, fingerprint

    ca_pem = _certificate_in(master_url, body, "ca_pem")
    got = fingerprint(ca_pem)
    if expected is not None and got != expected:
        raise MasterNotTrusted(master_url, got, expected)
    if expected is None:
        logger.warning(
            "joined without checking the master's CA (--insecure-first-join): trusting CA %s "
            "from %s from now on",
            got,
            master_url,
        )
    cert_pem = _certificate_in(master_url, body, "cert_pem")
    try:
        check_issued_to(cert_pem, ca_pem, key_pem)
    except AuthError as exc:
        why = exc.args[0] if exc.args else exc
        raise JoinAnswerRefused(master_url, f"its certificate is not usable: {why}") from exc
    node_id = fingerprint(cert_pem)
    if body.get("node_id") != node_id:
        raise JoinAnswerRefused(master_url, "its node_id is not its certificate's fingerprint")
    return _Answer(ca_pem, cert_pem, node_id, _pin_in(master_url, body))


def _certificate_in(master_url: str, body: dict[str, Any], field: str) -> bytes:
    """The one certificate of a PEM field: a CA appended to the fleet's would be trusted too.

    Raises:
        JoinAnswerRefused: no such text field, or not exactly one PEM certificate.
    """
    from relaysync.auth.ca import one_certificate

    text = body.get(field)
    if not isinstance(text, str) or not text.isascii():
        raise JoinAnswerRefused(master_url, f"its {field} is missing or not PEM text")
    try:
        return one_certificate(text.encode("ascii"))
    except AuthError as exc:
        why = exc.args[0] if exc.args else exc
        raise JoinAnswerRefused(
            master_url, f"its {field} must be exactly one PEM certificate ({why})"
        ) from exc


def _pin_in(master_url: str, body: dict[str, Any]) -> MasterPin:
    """The master's control address (host:port) and node id (a fingerprint, or none given).

    Raises:
        JoinAnswerRefused: either is missing or malformed.
    """
    address, node_id = body.get("control_address"), body.get("master_node_id") or None
    if not isinstance(address, str):
        raise JoinAnswerRefused(master_url, "its control_address is missing or not text")
    try:
        split_address(address)
    except ConfigError as exc:
        raise JoinAnswerRefused(master_url, f"its control_address: {exc}") from exc
    if node_id is not None and not (isinstance(node_id, str) and _FINGERPRINT.fullmatch(node_id)):
        raise JoinAnswerRefused(master_url, "its master_node_id is not a SHA-256 fingerprint")
    return MasterPin(control_address=address, node_id=node_id)


def reachable_control_address(control_address: str, master_url: str) -> str:
    """The master's control address as this agent can reach it: a master whose control server
    listens on every interface (0.0.0.0) reports that; the agent then uses the host it reaches
    the master's API at."""
    host, port = split_address(control_address)
    api_host = urlsplit(master_url).hostname
    if is_unspecified(host) and api_host:
        return join_address(api_host, port)
    return control_address


def _refuse_leftovers(identity: tls.Identity) -> None:
    """Before a join: the identity directory is absent or empty, so that the new identity can
    take its place whole (a key without its certificate is no use, but it is not deleted here).

    Raises:
        IdentityUnusable: it holds files, but not a whole identity.
    """
    directory = identity.key_path.parent
    if directory.is_dir() and (left := sorted(p.name for p in directory.iterdir())):
        raise IdentityUnusable(
            directory, f"it holds {', '.join(left)} but no whole identity (an earlier join stopped)"
        )


def _save_identity(
    identity: tls.Identity, key_pem: bytes, answer: _Answer, master_url: str
) -> None:
    """Write the key, both certificates and master.json into a new directory beside the
    identity's, then rename it into place: an identity is whole or absent, never half-written
    (a crash or a full disk leaves only the hidden staging directory, removed at the next join).
    """
    directory = identity.key_path.parent
    staging = directory.with_name(f".{directory.name}.joining")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    saved = {"control_address": answer.pin.control_address, "master_url": master_url}
    files = {
        identity.key_path.name: key_pem,
        identity.cert_path.name: answer.cert_pem,
        identity.ca_path.name: answer.ca_pem,
        MASTER_FILE: json.dumps(saved | _node_id_field(answer.pin)).encode(),
    }
    for name, data in files.items():
        _write_synced(staging / name, data)
    (staging / identity.key_path.name).chmod(0o600)
    fsync_dir(staging)
    try:
        os.rename(staging, directory)  # takes the place of an empty directory, not of files
    except OSError as exc:
        raise IdentityUnusable(
            directory, f"the new identity cannot be put in place: {exc}"
        ) from exc
    fsync_dir(directory.parent)


def _node_id_field(pin: MasterPin) -> dict[str, str]:
    return {"master_node_id": pin.node_id} if pin.node_id else {}


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_identity(identity: tls.Identity) -> MasterPin:
    """The master pin of a saved identity, once it is known to be whole and to trust one CA.

    Raises:
        IdentityUnusable: ca.pem holds more than the fleet's CA certificate (the trust store
            would take every one), or master.json is missing or unreadable.
    """
    from relaysync.auth.ca import one_certificate

    try:
        one_certificate(identity.ca_path.read_bytes())
    except (OSError, AuthError) as exc:
        why = exc.args[0] if isinstance(exc, AuthError) and exc.args else exc
        raise IdentityUnusable(
            identity.ca_path.parent,
            f"{identity.ca_path.name} must hold exactly one certificate, the fleet's CA ({why})",
        ) from exc
    return read_master_file(identity)


def _write_master_file(identity: tls.Identity, saved: dict[str, object]) -> None:
    path = identity.key_path.parent / MASTER_FILE
    tmp = path.with_name(f".{MASTER_FILE}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in saved.items() if v is not None}))
    tmp.replace(path)


def read_master_file(identity: tls.Identity) -> MasterPin:
    """Where and who the master is, as the join saved it.

    Raises:
        IdentityUnusable: master.json is missing (a join of an older release stopped after the
            certificates) or unreadable.
    """
    path = identity.key_path.parent / MASTER_FILE
    try:
        saved = json.loads(path.read_text())
        return MasterPin(
            control_address=str(saved["control_address"]),
            node_id=saved.get("master_node_id") or None,
        )
    except FileNotFoundError as exc:
        raise IdentityUnusable(
            path.parent, f"{MASTER_FILE} is missing (an earlier join stopped half-way)"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IdentityUnusable(path.parent, f"{MASTER_FILE} cannot be read ({exc!r})") from exc


def pin_master(identity: tls.Identity, node_id: str) -> None:
    """Save the master's node id into a master.json written before joins returned it."""
    path = identity.key_path.parent / MASTER_FILE
    saved = json.loads(path.read_text())
    saved["master_node_id"] = node_id
    _write_master_file(identity, saved)

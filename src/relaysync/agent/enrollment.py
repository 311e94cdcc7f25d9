"""Enrollment: an agent joins the fleet with a token, and keeps where and who its master is.

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
from urllib.parse import urlsplit

from relaysync._util.addresses import is_unspecified, join_address
from relaysync.config.load import split_address
from relaysync.config.schema import AgentConfig
from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import JoinRefused, MasterUnreachable
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


def join(cfg: AgentConfig, identity: tls.Identity) -> MasterPin:
    """Join the fleet with the token: get a certificate from the master's CA.

    Returns:
        the master's control address and, from a master that tells it, its node id.

    Raises:
        JoinRefused: the master refused the token or the request.
        MasterUnreachable: the master did not answer.
    """
    import httpx  # only at the first start: keeps the resident agent lighter

    from relaysync.auth.ca import make_key_and_csr

    identity.key_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem, csr_pem = make_key_and_csr(cfg.name)
    url = cfg.master_url.rstrip("/") + "/api/join"
    try:
        response = httpx.post(
            url,
            json={"token": cfg.token, "name": cfg.name, "csr_pem": csr_pem.decode()},
            timeout=HTTP_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise MasterUnreachable(cfg.master_url, exc) from exc
    if response.status_code != 200:
        detail = (
            response.json().get("detail", response.text)
            if response.content
            else response.status_code
        )
        raise JoinRefused(detail)
    body = response.json()
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

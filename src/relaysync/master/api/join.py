"""REST resource /api/join: an agent trades a join token and a CSR for its node certificate."""

from __future__ import annotations

import logging

from fastapi import HTTPException, status
from pydantic import BaseModel, Field

from relaysync.auth.ca import check_node_name, fingerprint
from relaysync.errors import AuthError, ConfigError, JoinRefused, NotFound
from relaysync.master.api._context import Context
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class JoinIn(BaseModel):
    token: str = Field(description="a join token from POST /api/tokens/join")
    name: str = Field(description="the server's name: 1-63 of A-Z a-z 0-9 . _ -")
    csr_pem: str = Field(description="PEM certificate signing request for the node's EC key")


class JoinOut(BaseModel):
    node_id: str  # SHA-256 of cert_pem's DER: the node's identity from now on
    cert_pem: str
    ca_pem: str
    control_address: str  # host:port of the master's control server
    # SHA-256 of the master's control certificate: the agent connects to no other ("" from an
    # app without a control server: such agents pin the master by its reserved name on first contact)
    master_node_id: str = ""


def _check_name_free(context: Context, name: str) -> None:
    try:
        existing = context.store.get_server(name)
    except NotFound:
        return
    raise HTTPException(
        status_code=status.HTTP_409_CONFLICT,
        detail=(
            f"server name {name!r} is already used by node {existing.node_id}; choose another "
            f"name, or DELETE /api/servers/{name} first"
        ),
    )


def join(body: JoinIn, context: Context) -> JoinOut:
    """Sign the agent's CSR if its join token is good; the server is listed from now on."""
    if not context.store.check_join_token(body.token):
        raise JoinRefused("the join token is unknown (never issued here, or revoked) or expired")
    try:
        check_node_name(body.name)
        _check_name_free(context, body.name)
        cert_pem = context.ca.sign_csr(body.csr_pem.encode(), name=body.name)
    except (AuthError, ConfigError) as exc:
        raise HTTPException(status_code=status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    node_id = fingerprint(cert_pem)
    context.store.upsert_server(node_id=node_id, name=body.name, region="", group="", address="")
    logger.info("node joined", extra={"node_id": node_id, "node_name": body.name})
    context.changed(EventType.SERVER_JOINED, node_id=node_id, name=body.name)
    return JoinOut(
        node_id=node_id,
        cert_pem=cert_pem.decode(),
        ca_pem=context.ca.ca_pem.decode(),
        control_address=context.control_address,
        master_node_id=context.master_node_id,
    )

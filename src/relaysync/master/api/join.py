"""REST resource /api/join: an agent trades a join token and a CSR for its node certificate.

A refusal is answered `{"detail": ..., "code": ...}` (auth/join_refusals.py): the agent words its
error by the code, and takes a 409 or 400 without one for another server's answer (a proxy's).
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from relaysync.auth.ca import check_node_name, fingerprint
from relaysync.auth.join_refusals import JoinRefusal
from relaysync.auth.tokens import normalize_fingerprint, split_join_string
from relaysync.errors import AuthError, ConfigError, JoinRefused, NotFound
from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class JoinDenied(Exception):
    """A refusal of a join: its code (and so its status) and what the operator reads."""

    def __init__(self, code: JoinRefusal, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


async def denied(request: Request, exc: Exception) -> JSONResponse:
    """The answer to a JoinDenied (the app's handler for it)."""
    assert isinstance(exc, JoinDenied)
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.code.status)


class JoinIn(InputModel):
    token: str = Field(
        max_length=256,
        description="a join token from POST /api/tokens/join (or its join string: token.ca-fingerprint)",
    )
    name: str = Field(max_length=255, description="the server's name: 1-63 of A-Z a-z 0-9 . _ -")
    csr_pem: str = Field(
        max_length=6144, description="PEM certificate signing request for the node's EC key"
    )
    ca_fingerprint: str = Field(
        default="",
        max_length=128,
        description="SHA-256 of the CA the agent expects; another one is refused before signing",
    )


class JoinOut(BaseModel):
    node_id: str  # SHA-256 of cert_pem's DER: the node's identity from now on
    cert_pem: str
    ca_pem: str
    control_address: str  # host:port of the master's control server
    # SHA-256 of the master's control certificate: the agent connects to no other ("" from an
    # app without a control server: such agents pin the master by its reserved name on first contact)
    master_node_id: str = ""


def _check_name_free(context: Context, name: str) -> None:
    """Refuse a name a server has, in any case: names are DNS names, web1 and Web1 are one."""
    try:
        existing = context.store.get_server(name)
    except NotFound:
        same = [s for s in context.store.list_servers() if s.name.lower() == name.lower()]
        if not same:
            return
        existing = same[0]
    raise JoinDenied(
        JoinRefusal.NAME_TAKEN,
        f"server name {name!r} is already used by node {existing.node_id} (as "
        f"{existing.name!r}); choose another name, or remove that server first "
        f"(`relaysync server remove {existing.name}`, or DELETE /api/servers/{existing.name}; "
        "only once no mapping names it)",
    )


def _token_for_this_fleet(context: Context, body: JoinIn) -> str:
    """The join token, if the CA the agent expects (in its join string: an older agent sends it
    whole; or in `ca_fingerprint`) is this fleet's: otherwise the agent would refuse the answer
    after its name was taken here.

    Raises:
        JoinRefused: the agent expects another CA, or the join string is malformed.
    """
    try:
        token, in_string = split_join_string(body.token)
        given = normalize_fingerprint(body.ca_fingerprint) if body.ca_fingerprint else None
    except ConfigError as exc:
        raise JoinRefused(str(exc)) from exc
    ours = context.ca.ca_fingerprint
    if any(f is not None and f != ours for f in (in_string, given)):
        raise JoinRefused(
            f"the agent expects the CA with fingerprint {in_string or given}, this master's is "
            f"{ours}: its join string is for another fleet"
        )
    return token


def _check_token(context: Context, body: JoinIn) -> None:
    """Refuse a join token that is not good here, and log it: an operator sees the attempts.

    Raises:
        JoinDenied: another fleet's join string, or a token unknown, revoked or expired.
    """
    try:
        token = _token_for_this_fleet(context, body)
        if not context.store.check_join_token(token):
            raise JoinRefused(
                "the join token is unknown (never issued here, or revoked) or expired"
            )
    except JoinRefused as exc:
        logger.warning("join refused for %r: %s", body.name, exc, extra={"node_name": body.name})
        raise JoinDenied(JoinRefusal.TOKEN, str(exc)) from exc


def join(body: JoinIn, context: Context) -> JoinOut:
    """Sign the agent's CSR if its join token is good; the server is listed from now on."""
    _check_token(context, body)
    try:
        check_node_name(body.name)
    except ConfigError as exc:
        raise JoinDenied(JoinRefusal.NAME_INVALID, str(exc)) from exc
    _check_name_free(context, body.name)
    try:
        cert_pem = context.ca.sign_csr(body.csr_pem.encode(), name=body.name)
    except (AuthError, ConfigError) as exc:
        raise JoinDenied(JoinRefusal.CSR_REFUSED, str(exc)) from exc
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

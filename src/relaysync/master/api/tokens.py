"""REST resource /api/tokens: join tokens (for agents) and API tokens (for clients of this API).

Tokens are shown once, when created; listings show ids only (a join token's is the beginning
of its SHA-256, an API token's its row number), since only hashes are kept. Revoking deletes a
token: it is refused from the next request on. An API token may revoke itself. The admin token
(the master's data_dir/admin-token file) is not in the store, so it is neither listed nor
revocable here and a revocation can never lock the operator out.

An API token has a scope: "read" (GET and HEAD) or "admin" (everything). Creating and revoking
tokens are writes, so only the admin token and admin-scoped API tokens may (enforced for every
route in _context.require_token): a leaked read token cannot mint a spare that survives its
revocation. Every token records who created it ("admin" or "api:<id>"), shown in listings.
New API tokens are admin unless the body asks for "read", as before scopes existed.
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ConfigDict, Field

from relaysync.auth.tokens import TokenScope, join_string
from relaysync.master.api._context import Bearer, Context
from relaysync.master.api._limits import InputModel, PathInt
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class JoinTokenIn(InputModel):
    ttl_s: float | None = Field(
        default=None, gt=0, description="lifetime in seconds; none = forever"
    )


class JoinTokenOut(BaseModel):
    token: str  # shown once: only its hash is kept
    # what to give agents (`relaysync agent --token`): the token and the CA's fingerprint, so
    # that an agent trusts no other master on its first join
    join_string: str
    ca_fingerprint: str  # SHA-256 of the fleet CA certificate's DER, hex
    id: str  # what the listing shows and DELETE /api/tokens/join/{id} takes
    expires_at: float | None  # unix time


class JoinTokenListed(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str  # the first 12 hex characters of the token's SHA-256 (more if two share them)
    created_at: float
    expires_at: float | None  # unix time; none = never
    expired: bool  # kept, and refused, until revoked
    created_by: str | None  # "admin" or "api:<id>"; none: created before this was recorded


class ApiTokenIn(InputModel):
    name: str = Field(min_length=1, max_length=255, description="who or what uses it")
    scope: TokenScope = Field(
        default=TokenScope.ADMIN, description="read: GET and HEAD only; admin: everything"
    )


class ApiTokenOut(BaseModel):
    token: str  # shown once: only its hash is kept
    id: int  # what the listing shows and DELETE /api/tokens/api/{id} takes
    name: str
    scope: TokenScope


class ApiTokenListed(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: float
    scope: TokenScope
    created_by: str | None  # "admin" or "api:<id>"; none: created before this was recorded


def create_join_token(
    context: Context, caller: Bearer, body: JoinTokenIn | None = None
) -> JoinTokenOut:
    """A join token, reusable by any number of agents until it expires or is revoked."""
    ttl_s = body.ttl_s if body is not None else None
    token = context.store.create_join_token(ttl_s=ttl_s, created_by=caller.id)
    token_id = context.store.join_token_id(token)
    context.changed(
        EventType.TOKEN_CREATED, kind="join", id=token_id, ttl_s=ttl_s, created_by=caller.id
    )
    return JoinTokenOut(
        token=token,
        join_string=join_string(token, context.ca.ca_fingerprint),
        ca_fingerprint=context.ca.ca_fingerprint,
        id=token_id,
        expires_at=None if ttl_s is None else time.time() + ttl_s,
    )


def list_join_tokens(context: Context) -> list[JoinTokenListed]:
    """Every join token, oldest first, expired ones included; never the token itself."""
    return [JoinTokenListed.model_validate(t) for t in context.store.list_join_tokens()]


def revoke_join_token(token_id: str, context: Context) -> None:
    """Revoke a join token: no agent can join with it any more; joined agents stay."""
    revoked = context.store.revoke_join_token(token_id)
    logger.info("join token revoked", extra={"token_id": revoked.id})
    # no assignment depends on a token: publish only, nothing to push to agents
    context.events.publish(EventType.TOKEN_REVOKED, kind="join", id=revoked.id)


def create_api_token(body: ApiTokenIn, context: Context, caller: Bearer) -> ApiTokenOut:
    """An API token for a client of this API, with the scope the body asks for."""
    token = context.store.create_api_token(body.name, scope=body.scope, created_by=caller.id)
    token_id = context.store.api_token_id(token)
    context.changed(
        EventType.TOKEN_CREATED,
        kind="api",
        id=token_id,
        name=body.name,
        scope=body.scope.value,
        created_by=caller.id,
    )
    return ApiTokenOut(token=token, id=token_id, name=body.name, scope=body.scope)


def list_api_tokens(context: Context) -> list[ApiTokenListed]:
    """Every API token, by id; never the token itself. The admin token is not one of them."""
    return [ApiTokenListed.model_validate(t) for t in context.store.list_api_tokens()]


def revoke_api_token(token_id: PathInt, context: Context) -> None:
    """Revoke an API token, even the one this request bears: it gets 401 from now on."""
    revoked = context.store.revoke_api_token(token_id)
    logger.info("API token revoked", extra={"token_id": revoked.id, "token_name": revoked.name})
    context.events.publish(EventType.TOKEN_REVOKED, kind="api", id=revoked.id, name=revoked.name)

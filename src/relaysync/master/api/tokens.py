"""REST resource /api/tokens: new join tokens (for agents) and API tokens (for clients)."""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, Field

from relaysync.master.api._context import Context
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class JoinTokenIn(BaseModel):
    ttl_s: float | None = Field(
        default=None, gt=0, description="lifetime in seconds; none = forever"
    )


class JoinTokenOut(BaseModel):
    token: str  # shown once: only its hash is kept
    expires_at: float | None  # unix time


class ApiTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=255, description="who or what uses it")


class ApiTokenOut(BaseModel):
    token: str  # shown once: only its hash is kept
    name: str


def create_join_token(context: Context, body: JoinTokenIn | None = None) -> JoinTokenOut:
    """A join token, reusable by any number of agents until it expires."""
    ttl_s = body.ttl_s if body is not None else None
    token = context.store.create_join_token(ttl_s=ttl_s)
    context.changed(EventType.TOKEN_CREATED, kind="join", ttl_s=ttl_s)
    return JoinTokenOut(token=token, expires_at=None if ttl_s is None else time.time() + ttl_s)


def create_api_token(body: ApiTokenIn, context: Context) -> ApiTokenOut:
    """An API token for a client of this API."""
    token = context.store.create_api_token(body.name)
    context.changed(EventType.TOKEN_CREATED, kind="api", name=body.name)
    return ApiTokenOut(token=token, name=body.name)

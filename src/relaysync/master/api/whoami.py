"""REST resource /api/whoami: which token a request bears and what it may do (for the console)."""

from __future__ import annotations

from pydantic import BaseModel

from relaysync.master.api._context import Bearer


class WhoAmIOut(BaseModel):
    id: str  # "admin" or "api:<id>"
    scope: str  # read (GET and HEAD only) or admin


def whoami(caller: Bearer) -> WhoAmIOut:
    """The caller's token id and scope: the console disables what a read token may not do."""
    return WhoAmIOut(id=caller.id, scope=caller.scope.value)

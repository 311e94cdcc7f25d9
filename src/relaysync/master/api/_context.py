"""What every API handler needs: the master's objects, token checks, and change notification."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import anyio.from_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from relaysync.auth.ca import CertificateAuthority
from relaysync.auth.tokens import ADMIN_CREATOR, TokenScope, api_creator, tokens_equal
from relaysync.master.events import EventBus, EventType
from relaysync.master.router import Router
from relaysync.master.source_failures import SourceFailures
from relaysync.master.store import Store

logger = logging.getLogger(__name__)

# what a read token may do: nothing a GET shows is secret (secrets are masked or never kept)
READ_METHODS = frozenset({"GET", "HEAD"})

_bearer = HTTPBearer(auto_error=False, description="The admin token or an API token")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """The master's objects the handlers use, kept in `app.state.context`."""

    store: Store
    ca: CertificateAuthority
    events: EventBus
    admin_token: str
    control_address: str
    master_node_id: str  # the control certificate's fingerprint, pinned by agents that join
    on_change: Callable[[], None]
    router: Router  # relay routes: re-planned on topology and routing edits
    source_failures: SourceFailures  # the control server's: the sources that cannot run

    def changed(self, event_type: EventType, **data: Any) -> None:
        """Publish an event and tell the control server to push new assignments.

        Handlers run in worker threads; on_change is called on the event loop's thread.
        """
        self.events.publish(event_type, **data)
        try:
            call_on_event_loop(self.on_change)
        except Exception:  # the change is committed; a failed push must not turn it into a 500
            logger.exception(
                "on_change failed after a committed change", extra={"event": str(event_type)}
            )


def call_on_event_loop(fn: Callable[[], None]) -> None:
    """Call `fn` on the event loop's thread when called from an anyio worker thread, else here."""
    called = False

    def call() -> None:
        nonlocal called
        called = True
        fn()

    try:
        anyio.from_thread.run_sync(call)
    except RuntimeError:
        if called:
            raise
        fn()  # on the event loop already, or in a thread anyio does not know


def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the app's ApiContext."""
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """Who bears a request: the admin token or an API token, with what it may do."""

    id: str  # "admin" or "api:<id>": what tokens it creates record as created_by
    scope: TokenScope


def require_token(
    request: Request,
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """FastAPI dependency on every non-public route: who bears the request, if allowed.

    Refuses it with 401 unless it carries the admin or an API token, and with 403 if a read
    token asks for anything but GET or HEAD (creating and revoking tokens included).
    """
    caller = _identify(context, credentials)
    if caller.scope is TokenScope.READ and request.method not in READ_METHODS:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=(
                f"this API token ({caller.id}) has scope 'read': it may only GET and HEAD, "
                f"not {request.method}; use the admin token or an API token created with "
                "`relaysync token create-api NAME --scope admin`"
            ),
        )
    return caller


def _identify(context: ApiContext, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        _unauthorized(
            "missing credentials: send the header Authorization: Bearer <admin or API token>"
        )
    token = credentials.credentials
    if tokens_equal(token, context.admin_token):
        return Caller(id=ADMIN_CREATOR, scope=TokenScope.ADMIN)
    found = context.store.find_api_token(token)
    if found is None:
        _unauthorized("invalid token: it is neither the admin token nor a known API token")
    return Caller(id=api_creator(found.id), scope=TokenScope(found.scope))


Bearer = Annotated[Caller, Depends(require_token)]


def _unauthorized(detail: str) -> NoReturn:
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )

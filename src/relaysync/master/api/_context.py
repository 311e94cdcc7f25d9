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
from relaysync.auth.tokens import tokens_equal
from relaysync.master.events import EventBus, EventType
from relaysync.master.router import Router
from relaysync.master.store import Store

logger = logging.getLogger(__name__)

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


def require_token(
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency: refuse the request (401) unless it carries the admin or an API token."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        _unauthorized(
            "missing credentials: send the header Authorization: Bearer <admin or API token>"
        )
    token = credentials.credentials
    if tokens_equal(token, context.admin_token) or context.store.check_api_token(token):
        return
    _unauthorized("invalid token: it is neither the admin token nor a known API token")


def _unauthorized(detail: str) -> NoReturn:
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )

"""Request limits of the REST API: body size and the numbers a JSON body may hold, checked first.

FastAPI reads and decodes a body before it runs a route's token check, so without a limit an
anonymous client makes the master hold several times whatever it sends. This ASGI middleware
reads at most the limit (a declared Content-Length above it is refused without reading) and
answers 413; a JSON body with NaN, Infinity, a float that overflows to infinity (1e400) or an
integer outside what a 64-bit database column holds is answered 422: such numbers would
otherwise reach the store (500) or the validation error response, which cannot serialise NaN.
A body nested deeper than the JSON decoder recurses is answered 400. The same numbers written as
strings ("NaN", "Infinity", "1e400"), which pydantic's lax mode turns into floats, are refused
by the request models themselves: every request body model derives from InputModel.

Error handling:
    Refusals are {"detail": "..."} like every other error of the API; the route never runs.

Resource handling:
    The body is kept in memory, at most the limit, and handed on whole to the app.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1  # SQLite INTEGER and PostgreSQL bigint: the widest column an id or seq has
INT64_MIN = -(2**63)

# An id or seq in a path or query: larger ones can be no row's, and would overflow the driver.
PathInt = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX)]
QueryInt = Annotated[int | None, Query(ge=INT64_MIN, le=INT64_MAX)]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class InputModel(BaseModel):
    """The base of every request body model: a float field refuses NaN and +-Infinity, also
    given as a string ("NaN", "inf", "1e400"), with a 422. A response model that derives from
    one sets allow_inf_nan=True again: a row stored before this check must still be listed."""

    model_config = ConfigDict(allow_inf_nan=False)


class BadNumber(ValueError):
    """A number a JSON body may not hold."""


class RequestLimits:
    """ASGI middleware: refuse a body over its path's limit (413) or with bad numbers (422)."""

    def __init__(self, app: App, *, max_body_bytes: int, per_path: Mapping[str, int]) -> None:
        """
        Args:
            max_body_bytes: the limit of every path not in `per_path`.
            per_path: exact paths with their own (smaller) limit, e.g. the anonymous /api/join.
        """
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.per_path = dict(per_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"].rstrip("/"), self.max_body_bytes)
        if _declared_length(scope) > limit:
            await _refuse(send, 413, _too_large(scope["path"], limit))
            return
        body = await _read_body(receive, limit)
        if body is _GONE:
            return  # the client went away before it sent the whole body: nobody to answer
        if body is None:
            await _refuse(send, 413, _too_large(scope["path"], limit))
            return
        if body and _is_json(scope) and (problem := body_problem(body)):
            await _refuse(send, *problem)
            return
        await self.app(scope, _replay(body, receive), send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed one itself
    return 0


_GONE = b"<disconnected>"  # a sentinel, compared by identity


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body; None once it passes `limit`; _GONE if the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read already, then waits on the client as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_json(scope: Scope) -> bool:
    """FastAPI decodes a body as JSON without a content type too."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True


def body_problem(body: bytes) -> tuple[int, str] | None:
    """The status and reason a JSON body is refused with, or None (also for a body that is not
    JSON: the route's own validation says what is wrong with it).

    The decoder recurses once per nesting level: a body like `[[[[...` a few thousand deep
    (a few KiB, anonymous on /api/join) raises RecursionError, answered 400 here rather than
    a 500 with a traceback in the log. No request model nests more than a few levels.
    """
    try:
        json.loads(body, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except BadNumber as exc:
        return 422, str(exc)
    except RecursionError:
        return 400, "the JSON body is nested too deeply"
    except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None
    return None


def _constant(name: str) -> float:
    raise BadNumber(f"the JSON body holds {name}: numbers must be finite")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadNumber(
            f"the JSON body holds {text[:40]}, which is out of range: numbers must be finite"
        )
    return value


def _int(text: str) -> int:
    if len(text) > 20:  # int() of a huge literal is slow (and capped at 4300 digits)
        raise BadNumber(f"the JSON body holds an integer of {len(text)} digits: at most 2^63-1")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadNumber(f"the JSON body holds {text}: integers must be within -2^63..2^63-1")
    return value


def _too_large(path: str, limit: int) -> str:
    return f"the request body is larger than {limit} bytes, the most {path} takes"


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

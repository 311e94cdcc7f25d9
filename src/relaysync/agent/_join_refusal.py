"""A join's refusal as the agent reports it: worded by what the master answered.

The master's own refusals carry a `code` (auth/join_refusals.py): a token to renew, a name to
change, a certificate request it cannot sign. A 403 of an older master is known by its
JoinRefused sentence. Anything else (a proxy's 409 or 502, a page from whatever answers at the
URL) is an unexpected answer, shown with its status and the start of its body.
"""

from __future__ import annotations

import json

from relaysync.auth.join_refusals import JoinRefusal
from relaysync.errors import (
    AuthError,
    ConfigError,
    CsrRefused,
    JoinAnswerRefused,
    JoinRefused,
    RelaySyncError,
)

BODY_SHOWN_CHARS = 200  # of an unexpected answer: enough to recognise a proxy's error page


def join_refusal(master_url: str, name: str, status: int, text: str) -> RelaySyncError:
    """The error for a join answered `status` (not 200) with body `text`."""
    body = _json_object(text)
    detail = body.get("detail")
    code = body.get("code")
    if isinstance(detail, str) and isinstance(code, str) and code in set(JoinRefusal):
        refusal = JoinRefusal(code)
        if refusal is JoinRefusal.TOKEN:
            return JoinRefused(_reason(detail))
        if refusal is JoinRefusal.CSR_REFUSED:
            return CsrRefused(master_url, _unprefixed(detail, AuthError))
        return ConfigError(f"the master refused this agent's name {name!r}: {detail}")
    if isinstance(detail, str) and code is None:
        older = _older_masters(master_url, name, status, detail)
        if older is not None:
            return older
    return JoinAnswerRefused(
        master_url, f"HTTP {status}, not a relaysync master's refusal: {text[:BODY_SHOWN_CHARS]!r}"
    )


def _older_masters(master_url: str, name: str, status: int, detail: str) -> RelaySyncError | None:
    """An older master's own refusal (FastAPI's `{"detail": ...}`, no code yet): a 403 is the
    token, a 409 the name taken, a 400 a name it refused or a certificate request it could not
    sign, told apart by the error's prefix; None for another status."""
    if status == 403 and detail.startswith(_head()):
        return JoinRefused(_reason(detail))
    if status == 409 or (status == 400 and _prefixed(detail, ConfigError)):
        return ConfigError(
            f"the master refused this agent's name {name!r}: {_unprefixed(detail, ConfigError)}"
        )
    if status == 400:
        return CsrRefused(master_url, _unprefixed(detail, AuthError))
    return None


def _prefixed(detail: str, kind: type[RelaySyncError]) -> bool:
    head = _template_parts(kind)[0]
    return bool(head) and detail.startswith(head)


def _json_object(text: str) -> dict[str, object]:
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _template_parts(kind: type[RelaySyncError]) -> tuple[str, str]:
    """What `kind`'s message template (the first line of its docstring) puts before and after
    its value."""
    head, _, tail = (kind.__doc__ or "{}").strip().splitlines()[0].partition("{}")
    return head, tail


def _head() -> str:
    return _template_parts(JoinRefused)[0].strip()


def _reason(detail: str) -> str:
    """The reason in a master's JoinRefused, without the sentence JoinRefused wraps it in: the
    master sends its own JoinRefused whole, which printed the wrapping twice."""
    head, tail = _template_parts(JoinRefused)
    return detail.removeprefix(head.strip()).removesuffix(tail.strip()).strip(" :.") or detail


def _unprefixed(detail: str, kind: type[RelaySyncError]) -> str:
    """`detail` without the "Authentication error: " of the master's own error."""
    head = _template_parts(kind)[0]
    return detail.removeprefix(head).strip().rstrip(".") or detail

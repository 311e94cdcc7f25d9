"""Supervision: run a long-lived task and start it again, with backoff, when it fails.

Error handling: a failure before the task reports ready is the caller's (a fatal error at start
ends the agent, as it did without supervision). After that, an Exception is logged with its
traceback and the task is started again after a delay that doubles from `min_delay_s` up to
`max_delay_s`; a run that lasted `max_delay_s` counts as healthy, and the next failure waits
`min_delay_s` again. Cancellation is never caught: it ends the supervision at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus

from relaysync._util.aio import leaf_error

logger = logging.getLogger(__name__)

Serve = Callable[..., Coroutine[Any, Any, Any]]  # called as serve(task_status=...)


async def supervise(
    serve: Serve,
    *,
    name: str,
    min_delay_s: float,
    max_delay_s: float,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run `serve` until cancelled (or until it returns), restarting it after each failure.

    Args:
        serve: a component's `serve(*, task_status)`; its started value is passed on once.
        name: what failed, for the log ("relay link of mapping 3 to web-2").
        min_delay_s, max_delay_s: the bounds of the restart backoff.

    Raises:
        Exception: whatever `serve` raised before it reported ready, the first time only.
    """
    delay_s, ready = min_delay_s, False
    while True:
        began = anyio.current_time()
        try:
            async with anyio.create_task_group() as tg:
                value = await tg.start(serve)
                if not ready:
                    ready = True
                    task_status.started(value)
            return
        except Exception as exc:  # cancellation is no Exception: it is never caught here
            if not ready:
                raise
            if anyio.current_time() - began >= max_delay_s:
                delay_s = min_delay_s  # it ran a healthy while: a new failure, a short wait
            _log_failure(name, exc, delay_s)
        await anyio.sleep(delay_s)
        delay_s = min(delay_s * 2, max_delay_s)


def _log_failure(name: str, exc: Exception, delay_s: float) -> None:
    err = leaf_error(exc)
    logger.warning(
        "%s failed unexpectedly, restarting it in %.1f s: %s: %s",
        name,
        delay_s,
        type(err).__name__,
        err,
        exc_info=exc,
    )

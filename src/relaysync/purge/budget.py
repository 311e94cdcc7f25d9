"""The time budget of one purge item: a base allowance plus time per byte moved, so that a big
file gets the time its transfer needs while a stalled transfer still ends.

The budget in force is found through a context variable, so the drivers and the confirm feed it
without every call passing it on.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

ITEM_TIMEOUT_S = 15.0  # refresh plus confirm of one URL on one cache, besides its bytes...
PER_REQUEST_S = 8.0  # ...or this after its last request was built, if later (the purger's
# httpx timeouts, 2 s to connect and 5 s per read, plus a margin: a slow answer that httpx takes
# is not cut by the budget)...
MIN_BYTES_PER_S = 1_000_000  # ...plus 1/this per byte read (a 300 MB file: 5 min more)

CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "purge_budget", default=None
)


class Budget:
    """Until `base_s` after the start or `per_request_s` after the last request sent,
    whichever is later, plus one second per `min_bytes_per_s` bytes read (to a cache or an
    origin) since that request. A fixed budget for the whole item ran out on a loaded machine
    for nginx and Squid, which send a request and make the cache fetch per Accept-Encoding value
    (27 requests where Varnish sends 4): every try of every item of theirs timed out. Time a
    request or a read did not use is not kept for the next request: a slow-drip answer still
    ends, and a 300 MB body read in 3 s does not leave 5 minutes to a request that hangs after
    it."""

    def __init__(
        self, base_s: float, min_bytes_per_s: float, per_request_s: float = PER_REQUEST_S
    ) -> None:
        self.base_s, self.min_bytes_per_s = base_s, min_bytes_per_s
        self.per_request_s = per_request_s
        self.bytes = 0
        self.bytes_since_request = 0  # what the deadline grants time for
        self.requests = 0
        self.started = self.last_request = anyio.current_time()
        self.scope = anyio.CancelScope(deadline=self.started + base_s)

    def moved(self, n: int) -> None:
        """Grant the time `n` more bytes may take."""
        self.bytes += n
        self.bytes_since_request += n
        self._extend()

    def requested(self) -> None:
        """A request is sent now: it has at least `per_request_s` (besides the bytes)."""
        self.requests += 1
        self.last_request = anyio.current_time()
        self.bytes_since_request = 0
        self._extend()

    def _extend(self) -> None:
        self.scope.deadline = (
            max(self.started + self.base_s, self.last_request + self.per_request_s)
            + self.bytes_since_request / self.min_bytes_per_s
        )


@contextmanager
def budgeted(base_s: float, min_bytes_per_s: float) -> Iterator[Budget]:
    """Run the block under a fresh Budget.

    Raises:
        TimeoutError: the block ran out of its budget.
    """
    budget = Budget(base_s, min_bytes_per_s)
    token = CURRENT.set(budget)
    try:
        with budget.scope:
            yield budget
    finally:
        CURRENT.reset(token)
    if budget.scope.cancelled_caught:
        raise TimeoutError(
            f"no result within {budget.base_s:.0f} s, or {budget.per_request_s:.0f} s after "
            f"the last of {budget.requests} requests, + {budget.bytes} bytes "
            f"at {budget.min_bytes_per_s:.0f} B/s"
        )


def moved(n: int) -> None:
    """Tell the budget in force (if any) that `n` more bytes arrived."""
    budget = CURRENT.get()
    if budget is not None:
        budget.moved(n)


def requested() -> None:
    """Tell the budget in force (if any) that one more request is sent."""
    budget = CURRENT.get()
    if budget is not None:
        budget.requested()

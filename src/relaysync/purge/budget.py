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
MIN_BYTES_PER_S = 1_000_000  # ...each of which may take 1/this more (a 300 MB file: 5 min)

CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "purge_budget", default=None
)


class Budget:
    """`base_s`, plus one second per `min_bytes_per_s` bytes read from a cache or an origin."""

    def __init__(self, base_s: float, min_bytes_per_s: float) -> None:
        self.base_s, self.min_bytes_per_s = base_s, min_bytes_per_s
        self.bytes = 0
        self.started = anyio.current_time()
        self.scope = anyio.CancelScope(deadline=self.started + base_s)

    def moved(self, n: int) -> None:
        """Grant the time `n` more bytes may take."""
        self.bytes += n
        self.scope.deadline = self.started + self.base_s + self.bytes / self.min_bytes_per_s


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
            f"no result within {budget.base_s:.0f} s + {budget.bytes} bytes "
            f"at {budget.min_bytes_per_s:.0f} B/s"
        )


def moved(n: int) -> None:
    """Tell the budget in force (if any) that `n` more bytes arrived."""
    budget = CURRENT.get()
    if budget is not None:
        budget.moved(n)

"""A link's refusals as a route change in flight (ROUTES_STALE, or its relay's parent stream
restarting): retried soon while the change may settle, then ever more seldom, logged sparingly.

The newer routing table reaches both nodes within seconds, so the first retries stay short (at
most ROUTES_STALE_RETRY_MAX_S apart) and quiet: one line at INFO. Refusals that outlast
ROUTES_STALE_LIMIT_S are a failed hop (the caller reports it to the master, which re-plans), and
the target is asked again with a backoff doubling up to ROUTES_STALE_BACKOFF_MAX_S: a target
that never takes us (it refuses a revoked source, its assignment lost) costs a session a minute,
not one every few seconds for ever. That is logged once as a warning, then at most every
ROUTES_STALE_LOG_INTERVAL_S with the count of refusals since.
"""

from __future__ import annotations

import logging
from typing import Any

from relaysync._util.repeats import Repeats
from relaysync.constants import (
    ROUTES_STALE_BACKOFF_MAX_S,
    ROUTES_STALE_FIRST_RETRY_S,
    ROUTES_STALE_LIMIT_S,
    ROUTES_STALE_LOG_INTERVAL_S,
    ROUTES_STALE_RETRY_MAX_S,
)
from relaysync.errors import error_text


class StaleRoutes:
    """The refusals in a row of one link's sessions as a route change in flight."""

    def __init__(self, log: logging.LoggerAdapter[Any], target: str) -> None:
        self.log = log
        self.target = target  # its name, for the log
        self.settled()

    def settled(self) -> None:
        """The target took a session: any wait is over."""
        self.since: float | None = None  # monotonic time of the first refusal in a row
        self.failed = False  # they outlasted ROUTES_STALE_LIMIT_S: a failed hop
        self._delay_s = ROUTES_STALE_FIRST_RETRY_S
        self._repeats = Repeats(ROUTES_STALE_LOG_INTERVAL_S)  # refusals since the last line

    def refused(self, err: BaseException, now: float) -> float:
        """Count and log (as due) a refusal at monotonic time `now`; the wait before the next
        session. `failed` tells whether the refusals have outlasted ROUTES_STALE_LIMIT_S."""
        if self.since is None:
            self.since = now
        became_failed = not self.failed and now - self.since > ROUTES_STALE_LIMIT_S
        self.failed = self.failed or became_failed
        cap_s = ROUTES_STALE_BACKOFF_MAX_S if self.failed else ROUTES_STALE_RETRY_MAX_S
        delay_s = min(self._delay_s, cap_s)
        self._delay_s = min(delay_s * 2, ROUTES_STALE_BACKOFF_MAX_S)
        self._log(err, now, delay_s, first=self.since == now, became_failed=became_failed)
        return delay_s

    def _log(
        self, err: BaseException, now: float, delay_s: float, *, first: bool, became_failed: bool
    ) -> None:
        due = self._repeats.add(now)
        if first:
            self.log.info(
                "link to %s waits for the routes to settle, retrying within %.0f s: %s",
                *(self.target, ROUTES_STALE_RETRY_MAX_S, error_text(err)),
            )
        elif became_failed:
            self.log.warning(
                "link to %s refused for %.0f s, reported as a failed hop; asking again ever "
                "more seldom (every %.0f s at most), next in %.0f s: %s",
                *(self.target, now - (self.since or now), ROUTES_STALE_BACKOFF_MAX_S, delay_s),
                error_text(err),
            )
        elif self.failed and due:
            self.log.warning(
                "link to %s still refused: %s times in the last %.0f s, next in %.0f s: %s",
                *(self.target, self._repeats.count, now - self._repeats.logged_at),
                *(delay_s, error_text(err)),
            )
        else:
            self.log.debug("link to %s refused again, retrying in %.1f s", self.target, delay_s)
            return
        self._repeats.reset(now)

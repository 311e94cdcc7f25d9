"""Route names: whether a commit report's route names servers of the fleet, the source first.

A target reports the names of the nodes its changes came through, the mapping's source first
(transfer/sender.py `route`); the job log stores them joined by ">" (the console shows them),
and a route of the source alone marks the report "direct", which lets its commits make a
failure of their path moot (store/_joblog_supersede.py). So a route is believed only when its
first name is the source's and every name is a server's. The names are cached by node and read
again on a miss (at most every ROUTE_NAMES_REREAD_S: a link sending bad routes cannot make a
read of each report) or after `forget` (the control server's notify_change).
"""

from __future__ import annotations

import time

import anyio

from relaysync.master.store.store import Store
from relaysync.protocol.messages import CommitReport

ROUTE_NAMES_REREAD_S = 1.0  # a server joined meanwhile is known within this on a miss


class RouteNames:
    """The fleet's server names by node id, as of the last read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._names: dict[str, str] = {}  # node id -> name
        self._read_at = float("-inf")  # time.monotonic() of the last read

    def forget(self) -> None:
        """Drop the names (callable from any thread): a name is not checked again once
        known, so a server removed would otherwise still be believed."""
        self._names = {}
        self._read_at = float("-inf")

    async def fault(self, report: CommitReport) -> str | None:
        """Why `report`'s route cannot be believed (its first name not the source's, or a name
        that is no server's), or None: believed, or no route (an agent that does not say)."""
        if not report.route:
            return None
        why = _fault(report, self._names)
        if why is not None and time.monotonic() - self._read_at >= ROUTE_NAMES_REREAD_S:
            self._read_at = time.monotonic()
            self._names = await anyio.to_thread.run_sync(self._read)
            why = _fault(report, self._names)
        return why

    def _read(self) -> dict[str, str]:
        return {server.node_id: server.name for server in self.store.list_servers()}


def _fault(report: CommitReport, names: dict[str, str]) -> str | None:
    source = names.get(report.source_node)
    if report.route[0] != source:
        return f"starting at {report.route[0][:64]!r}, not at the source {source!r}"
    known = set(names.values())
    strangers = [name for name in report.route if name not in known]
    if strangers:
        return f"naming {len(strangers)} nodes that are no servers ({strangers[0][:64]!r}, ...)"
    return None

"""Source failures: the mappings' sources that cannot run, as their agents last reported them.

A source agent sends, with its figures (MetricsReport.source_failures, at once when one begins
or ends), every source of its that cannot start (its folder missing, refused, unreadable...)
and why. The master keeps each agent's latest list, by mapping: a report without a mapping's
failure clears it. An agent whose link goes down keeps its last list (its source still cannot
run as far as anyone knows; the server shows as down beside it) until its next report, its
removal, or the mapping's deletion. Memory: at most one entry per mapping per reporting agent.

Thread use: `take` and `forget_*` run on the event loop; `get` is called from the API's worker
threads. Each node's entries are replaced as a whole (one dict assignment), never changed in
place, so a reader sees one report's list or the next.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from relaysync.protocol.messages import SourceFailure


class SourceFailureOnRecord(NamedTuple):
    """A mapping's source that cannot run, as the master shows it."""

    mapping_id: int
    node_id: str  # the reporting agent: the mapping's source when it reported
    server: str  # its name
    error: str  # why, as the agent logs it
    since: float  # unix time on the agent: the first failure since the source last ran
    attempts: int  # starts tried and failed since then
    reported_at: float  # unix time on the master: the last report that had it

    def to_event(self) -> dict[str, object]:
        """The data of its `source_failing` event."""
        return {
            "mapping_id": self.mapping_id,
            "server": self.server,
            "error": self.error,
            "since": self.since,
            "attempts": self.attempts,
        }


class Changes(NamedTuple):
    """What a report changed: failures new or with a new reason, and those it ended."""

    failing: list[SourceFailureOnRecord]
    ended: list[SourceFailureOnRecord]


class SourceFailures:
    """The latest failures each source agent reported, by node id and mapping id."""

    def __init__(self) -> None:
        self._by_node: dict[str, dict[int, SourceFailureOnRecord]] = {}

    def get(self, mapping_id: int, source_node: str) -> SourceFailureOnRecord | None:
        """The failure of the mapping's source, as its source node `source_node` reported it."""
        return self._by_node.get(source_node, {}).get(mapping_id)

    def known(self, node_id: str, mapping_id: int) -> bool:
        """Whether the node's last report had the mapping's failure."""
        return mapping_id in self._by_node.get(node_id, {})

    def take(
        self,
        node_id: str,
        server: str,
        failures: Sequence[SourceFailure],
        now: float | None = None,
    ) -> Changes:
        """Replace the node's failures with those of its newest report (`failures`, already
        checked to be of mappings it is the source of)."""
        at = time.time() if now is None else now
        before = self._by_node.get(node_id, {})
        after = {
            f.mapping_id: SourceFailureOnRecord(
                f.mapping_id, node_id, server, f.error, f.since, f.attempts, at
            )
            for f in failures
        }
        if after:
            self._by_node[node_id] = after
        else:
            self._by_node.pop(node_id, None)
        failing = [
            r
            for m, r in after.items()
            if m not in before or (before[m].error, before[m].since) != (r.error, r.since)
        ]
        ended = [r for m, r in before.items() if m not in after]
        return Changes(failing, ended)

    def forget_node(self, node_id: str) -> list[SourceFailureOnRecord]:
        """Forget a removed or revoked server's failures; returns them."""
        return list(self._by_node.pop(node_id, {}).values())

    def forget_mapping(self, mapping_id: int) -> list[SourceFailureOnRecord]:
        """Forget a deleted mapping's failures; returns them."""
        gone = []
        for node_id, records in list(self._by_node.items()):
            if mapping_id in records:
                gone.append(records[mapping_id])
                rest = {m: r for m, r in records.items() if m != mapping_id}
                if rest:
                    self._by_node[node_id] = rest
                else:
                    del self._by_node[node_id]
        return gone

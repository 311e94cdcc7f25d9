"""The outgoing links of one node for one mapping: one per child in the routing table.

A re-plan by the master changes a node's children without restarting anything else: links to
children that left are cancelled, links to new children start, and a child whose spec (policy,
link secret) changed gets a fresh link.

Error handling: a link reconnects by itself after a link failure; anything else it raises (a
bug, a peer address it cannot use) is logged and the link started again with backoff
(_util/supervise.py): it costs that child only, never the mapping's other links, nor the agent
(a relay's links run in the agent's own task group).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from relaysync._util.supervise import supervise
from relaysync.constants import TASK_RETRY_MAX_S, TASK_RETRY_MIN_S
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.transfer.sender import TargetLink

logger = logging.getLogger(__name__)

MakeLink = Callable[[TargetSpec], TargetLink]


def children_of(spec: MappingSpec, node_id: str) -> dict[str, TargetSpec]:
    """The targets `node_id` streams this mapping to: its children in the routing table.

    Without a table the source streams to every target (a star).
    """
    targets = {t.node_id: t for t in spec.targets}
    if not spec.routes:
        return dict(targets) if node_id == spec.source_node else {}
    return {
        h.child: targets[h.child] for h in spec.routes if h.parent == node_id and h.child in targets
    }


def parents_of(spec: MappingSpec, node_id: str) -> frozenset[str]:
    """Who may stream this mapping to `node_id`: its parent in the table, else the source."""
    parents = frozenset(h.parent for h in spec.routes if h.child == node_id)
    return parents or frozenset({spec.source_node})


class LinkSet:
    """The running links of one mapping on this node, keyed by child node id."""

    def __init__(self, tg: TaskGroup, make: MakeLink, *, label: str) -> None:
        self._tg = tg
        self._make = make
        self._label = label
        self._links: dict[str, tuple[TargetSpec, TargetLink, anyio.CancelScope]] = {}

    @property
    def links(self) -> list[TargetLink]:
        return [link for _, link, _ in self._links.values()]

    def reconcile(self, children: dict[str, TargetSpec]) -> None:
        for child, (spec, _link, scope) in list(self._links.items()):
            if children.get(child) != spec:
                scope.cancel()
                del self._links[child]
        added = [c for c in children if c not in self._links]
        for child in added:
            link = self._make(children[child])
            scope = anyio.CancelScope()
            self._links[child] = (children[child], link, scope)
            self._tg.start_soon(
                self._run, link, scope, f"{self._label}: link to {link.target.name}"
            )
        if added:
            logger.info(
                "%s: links to %s", self._label, ", ".join(link.target.name for link in self.links)
            )

    def close(self) -> None:
        self.reconcile({})

    def restart(self, children: dict[str, TargetSpec]) -> None:
        """Start every link again (each opens a new session with what it announces now)."""
        self.close()
        self.reconcile(children)

    @staticmethod
    async def _run(link: TargetLink, scope: anyio.CancelScope, name: str) -> None:
        with scope:
            await supervise(
                link.serve, name=name, min_delay_s=TASK_RETRY_MIN_S, max_delay_s=TASK_RETRY_MAX_S
            )

"""Route names: whether a commit report's route is made of node names.

A target reports the names of the nodes its changes came through, the mapping's source first
(transfer/sender.py `route`); the job log stores them joined by ">" (the console shows them).
So a route is kept only when each name has the form of a node name (auth/ca.py
`is_node_name`: A-Z a-z 0-9 . _ -, as a join takes it): no markup, separator or control
character reaches the job log. Whether each is a server of the fleet now is not asked: an agent
may run under another name than it joined with (the master only warns), and a relay may be
removed or renamed while a report naming it waits in an agent's outbox; reading the servers
for that cost a store read a second on the control path and dropped those honest routes.
"""

from __future__ import annotations

from relaysync.auth.ca import is_node_name
from relaysync.protocol.messages import CommitReport


def route_fault(report: CommitReport) -> str | None:
    """Why `report`'s route cannot be kept (a name that is no node name), or None."""
    strangers = [name for name in report.route if not is_node_name(name)]
    if strangers:
        return f"naming {len(strangers)} that are no node names ({strangers[0][:64]!r}, ...)"
    return None

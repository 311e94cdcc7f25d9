"""A control link to a master that is not there: its queue, backoff and wake-ups looked at alone."""

from __future__ import annotations

import socket
import ssl

from relaysync.agent.master_link import MasterLink
from relaysync.agent.outbox import ReportOutbox
from relaysync.protocol.messages import Register


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offline_link(outbox: ReportOutbox | None = None) -> MasterLink:
    """A MasterLink whose master address refuses every connection."""

    async def on_assignment(_message: object) -> None:
        return None

    return MasterLink(
        control_address=f"127.0.0.1:{closed_port()}",
        ctx=ssl.create_default_context(),
        master_node_id="m" * 64,
        node_id="n" * 64,
        name="a",
        register=Register(name="a", region="", group="", peer_address="127.0.0.1:1"),
        on_assignment=on_assignment,
        outbox=outbox,
    )

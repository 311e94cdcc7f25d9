"""Refusals of a peer session (agent/peer_server.py): which sender is told its routing table is
stale, and the Error that tells a refused sender why."""

from __future__ import annotations

import anyio

from relaysync.constants import CLOSE_TIMEOUT_S
from relaysync.errors import FolderRefused, RelaySyncError, RoutesStale, UnknownPeer
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import Error, ErrorCode, Hello, OpenMapping
from relaysync.transfer.target_folder import TargetFolder


def routes_stale(
    hello: Hello,
    opened: OpenMapping,
    folder: TargetFolder | None,
    sender: str,
    *,
    proven: bool = True,
) -> RoutesStale | None:
    """The refusal of a sender that runs another routing epoch and is not our parent in ours
    (the mapping is not ours yet, or the sender is a member our table does not name as the
    parent): the newer table reaches both nodes shortly, so it retries quietly (no HopFailed).

    `sender` is the TLS-proven node id, or on a plain link the id it claims (`proven` False):
    only a refusal rests on it, never a session, and such a sender is not told our epoch."""
    if folder is None:
        if not opened.route_epoch:
            return None
        ours = "none (the mapping is not ours yet)"
    elif (
        sender in folder.parents
        or sender not in folder.members
        or opened.route_epoch == folder.route_epoch
    ):
        return None
    else:
        ours = str(folder.route_epoch)
    ours = ours if proven else "another"
    return RoutesStale(
        opened.mapping_id, f"{hello.name} runs routing epoch {opened.route_epoch}, we run {ours}"
    )


async def try_send_error(framed: FramedStream, exc: RelaySyncError) -> None:
    code = (
        ErrorCode.ROUTES_STALE
        if isinstance(exc, RoutesStale)
        else ErrorCode.UNKNOWN_PEER
        if isinstance(exc, UnknownPeer)
        else ErrorCode.UNKNOWN_MAPPING
        if isinstance(exc, FolderRefused)
        else ErrorCode.BAD_MESSAGE
    )
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        try:
            await framed.send(Error(code=code, detail=str(exc)))
        except Exception:  # noqa: BLE001 - the link may already be gone; the close follows
            pass

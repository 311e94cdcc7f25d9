"""The mass-delete holds the master knows of (a mixin of ControlServer, master/control.py): a
source's MassDeleteHeld publishes `mass_delete_held` and an alarm, its MassDeleteEnded
`mass_delete_ended` (the console drops the row), and a hold told again when the source's
control link comes back (`resent`) is published only if this master does not show it already
(it restarted: its event ring was in memory)."""

from __future__ import annotations

from typing import Any

from relaysync.master.events import EventType
from relaysync.protocol.messages import MassDeleteEnded, MassDeleteHeld

from ._control_trust import AgentLink, ControlTrust, logger


class ControlHolds(ControlTrust):
    """ControlServer's holds; ControlServer sets `_holds` to {} in its __init__."""

    _holds: dict[int, tuple[str, dict[str, Any]]]  # mapping id -> the source's node id, event data

    def _take_held(self, link: AgentLink, message: MassDeleteHeld) -> None:
        """A hold the link (the mapping's source, `_believed`) reports."""
        data: dict[str, Any] = {
            "mapping_id": message.mapping_id,
            "server": link.name,
            "deletes": message.deletes,
            "entries": message.entries,
            "root_missing": message.root_missing,
        }
        if message.resent and self._holds.get(message.mapping_id) == (link.node_id, data):
            return  # shown already: the link came back, this master did not restart
        self._holds[message.mapping_id] = (link.node_id, data)
        logger.error(
            "mapping %s: source %s held back %s deletes of %s entries%s; "
            "POST /api/mappings/%s/confirm-deletes to let them go",
            message.mapping_id,
            link.name,
            message.deletes,
            message.entries,
            " (its folder is missing)" if message.root_missing else "",
            message.mapping_id,
        )
        self.events.publish(EventType.MASS_DELETE_HELD, **data)
        self.events.publish(EventType.ALARM, reason="mass delete held", **data)

    async def _take_hold_end(self, link: AgentLink, message: MassDeleteEnded) -> None:
        """The end of a hold, from the node that reported it or the mapping's source (a former
        source tells it too: its mapping was moved or removed)."""
        mapping_id = message.mapping_id
        held = self._holds.get(mapping_id)
        if (held is None or held[0] != link.node_id) and not await self._members.allow(
            mapping_id, lambda m: m[0] == link.node_id
        ):
            self._refuse(link, "mass_delete_ended", mapping_id, "the end of a hold it never had")
            return
        self._holds.pop(mapping_id, None)
        logger.warning(
            "mapping %s: source %s no longer holds deletes (%s)",
            mapping_id,
            link.name,
            message.reason,
        )
        self.events.publish(
            EventType.MASS_DELETE_ENDED,
            mapping_id=mapping_id,
            server=link.name,
            reason=message.reason,
        )

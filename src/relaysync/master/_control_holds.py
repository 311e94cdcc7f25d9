"""The mass-delete holds the master knows of (a mixin of ControlServer, master/control.py): a
source's MassDeleteHeld publishes `mass_delete_held` and an alarm, its MassDeleteEnded
`mass_delete_ended` (the console drops the row), and a hold told again when the source's
control link comes back (`resent`) is published only if this master does not show it already
(it restarted: its event ring was in memory). A hold on record also goes when an operator
confirms its deletes or deletes its mapping (the console drops the row on those events too)."""

from __future__ import annotations

from typing import Any, NamedTuple

from relaysync.master.events import Event, EventType
from relaysync.protocol.messages import MassDeleteEnded, MassDeleteHeld

from ._control_trust import AgentLink, ControlTrust, logger


class HoldOnRecord(NamedTuple):
    """A hold the master shows: who reported it, its event's data and its number there."""

    node_id: str
    data: dict[str, Any]
    hold: int  # MassDeleteHeld.hold (0: unknown, an older agent)


class ControlHolds(ControlTrust):
    """ControlServer's holds; ControlServer sets `_holds` to {} in its __init__."""

    _holds: dict[int, HoldOnRecord]  # by mapping id

    def _take_held(self, link: AgentLink, message: MassDeleteHeld) -> None:
        """A hold the link (the mapping's source, `_believed`) reports."""
        data: dict[str, Any] = {
            "mapping_id": message.mapping_id,
            "server": link.name,
            "deletes": message.deletes,
            "entries": message.entries,
            "root_missing": message.root_missing,
        }
        record = HoldOnRecord(link.node_id, data, message.hold)
        if message.resent and self._holds.get(message.mapping_id) == record:
            return  # shown already: the link came back, this master did not restart
        self._holds[message.mapping_id] = record
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
        """The end of the hold on record, from the node that reported it or the mapping's
        source (a former source tells it too: its mapping was moved or removed). An end of no
        hold on record (a source that started again tells one in case it held before; the
        operator confirmed or deleted the mapping first) or of another hold (a late end of an
        older one: `hold` names another) is dropped quietly: nothing to take off the console."""
        mapping_id = message.mapping_id
        held = self._holds.get(mapping_id)
        if held is None or (
            message.hold and (held.node_id, held.hold) != (link.node_id, message.hold)
        ):
            logger.debug(
                "mapping %s: end of a hold not on record from %s (%s)",
                mapping_id,
                link.name,
                message.reason,
            )
            return
        if held.node_id != link.node_id and not await self._members.allow(
            mapping_id, lambda m: m[0] == link.node_id
        ):
            self._refuse(link, "mass_delete_ended", mapping_id, "the end of a hold it never had")
            return
        del self._holds[mapping_id]
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

    def _forget_hold(self, event: Event) -> None:
        """Forget the hold of a mapping deleted, or whose deletes an operator confirmed (the
        source's end of it, if any, then finds none on record): the table cannot grow."""
        confirmed = event.type == EventType.MAPPING_CHANGED and "delete_confirm" in event.data
        if confirmed or event.type == EventType.MAPPING_DELETED:
            mapping_id = event.data.get("mapping_id")
            if isinstance(mapping_id, int):
                self._holds.pop(mapping_id, None)

"""The sources that cannot run, as their agents report them (a mixin of ControlServer,
master/control.py): kept in `source_failures` (master/source_failures.py) for the mapping
status API, and published as `source_failing` (new, or a new reason) and `source_failure_ended`
(the source runs again, or is no longer that agent's) events. A failure is believed from the
mapping's source only; one of another mapping is refused (counted and logged once, like a head).
A source's ReleaseReport (what a manual send covers, in which journal) goes to the store."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import msgspec

from relaysync.master.events import Event, EventType
from relaysync.protocol.messages import ReleaseReport, SourceFailure, failure_reason

from ._control_holds import ControlHolds
from ._control_trust import MAX_REFUSED_HEADS_KEPT, AgentLink, logger
from .source_failures import Changes, SourceFailures

# `source_failing` (and `source_failure_ended`) events one figures report may publish: a few
# screens of the console's event list; the event ring keeps what else happened.
MAX_FAILURE_EVENTS = 32


class ControlSources(ControlHolds):
    """ControlServer's source failures; ControlServer sets `source_failures` in its __init__."""

    source_failures: SourceFailures

    async def _take_source_failures(
        self, link: AgentLink, failures: Sequence[SourceFailure]
    ) -> None:
        """Keep the failures of the link's report, those of mappings it is the source of."""
        believed = []
        for failure in failures:  # display text from any agent: one safe line, never a reason
            failure = msgspec.structs.replace(failure, error=failure_reason(failure.error))
            if failure.mapping_id in link.refused_failures:
                continue
            # asked at each report (cached by the store's epoch): a former source, once the
            # mapping moved, must not go on publishing failures of it
            if await self._members.allow(failure.mapping_id, lambda m: m[0] == link.node_id):
                believed.append(failure)
                continue
            if len(link.refused_failures) < MAX_REFUSED_HEADS_KEPT:
                link.refused_failures.add(failure.mapping_id)
            self._refuse(
                link, "source_failure", failure.mapping_id, "a failure of a source it is not"
            )
        changes = self.source_failures.take(link.node_id, link.name, believed)
        self._publish_failures(link, changes)

    def _publish_failures(self, link: AgentLink, changes: Changes) -> None:
        """Log and publish what began and ended, up to MAX_FAILURE_EVENTS of each per report:
        one report may name thousands (a disk gone under every mapping of an agent), and the
        event ring would lose everything else. The rest are kept all the same (the mapping
        status shows them), counted in one warning."""
        for record in changes.failing[:MAX_FAILURE_EVENTS]:
            logger.warning(
                "mapping %s: its source on %s cannot run (since %.0f, %s attempts): %s",
                record.mapping_id,
                record.server,
                record.since,
                record.attempts,
                record.error,
            )
            self.events.publish(EventType.SOURCE_FAILING, **record.to_event())
        for record in changes.ended[:MAX_FAILURE_EVENTS]:
            logger.info("mapping %s: its source on %s fails no more", record.mapping_id, link.name)
            self.events.publish(
                EventType.SOURCE_FAILURE_ENDED, mapping_id=record.mapping_id, server=link.name
            )
        more = (len(changes.failing[MAX_FAILURE_EVENTS:]), len(changes.ended[MAX_FAILURE_EVENTS:]))
        if any(more):
            logger.warning(
                "agent %s: %s more sources failing and %s more running again than published "
                "as events (at most %s of each per report; the mapping status shows them)",
                link.name,
                *more,
                MAX_FAILURE_EVENTS,
            )

    async def _take_release(self, link: AgentLink, message: ReleaseReport) -> None:
        """Note what a release of a manual or reserved mapping covers, in the journal its source
        names: taken from the mapping's source only (the store checks `link.node_id` in the
        same write)."""
        await anyio.to_thread.run_sync(
            self.store.modes.record_release,
            message.mapping_id,
            message.release,
            message.upto_seq,
            link.node_id,
            message.journal_id,
        )

    def _forget_source_failures(self, event: Event) -> None:
        """Forget the failures of a mapping deleted or a server removed: the table cannot grow."""
        if event.type == EventType.MAPPING_DELETED:
            mapping_id = event.data.get("mapping_id")
            if isinstance(mapping_id, int):
                self.source_failures.forget_mapping(mapping_id)
        elif event.type in (EventType.SERVER_REMOVED, EventType.SERVER_REVOKED):
            self.source_failures.forget_node(str(event.data.get("node_id", "")))

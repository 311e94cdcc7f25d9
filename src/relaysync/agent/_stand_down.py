"""The agent standing down: refused by its master as no member of the fleet, it stops acting on
its last assignment.

A revoked or removed node's sessions are refused by its mapping's targets (they run the
assignment made after the revoke); going on would retry them for ever, filling its log and its
targets'. So its sources and its relays' links stop; its folders, journals, spools and state stay
on disk, and its target folders stay open (no peer names it any more: nothing comes). A refusal
of another kind (a certificate, a clock) or a master out of reach stops nothing: the agent goes
on with its last assignment, as it must while the master is down. Once the master takes it
again, its next assignment starts everything it names afresh.

AgentService (agent/service.py) inherits it and owns the state.
"""

from __future__ import annotations

import logging

import anyio

from relaysync.constants import RECEIVE_TIMEOUT_S
from relaysync.transfer import tls

from ._source_role import SourceRole
from ._target_role import TargetRole

logger = logging.getLogger(__name__)


class StandDown(SourceRole, TargetRole):
    """Stop acting on the last assignment while the master refuses this node (a mixin)."""

    stood_down = False  # the master refused this node; until it sends an assignment again
    _assign_lock: anyio.Lock

    identity: tls.Identity  # AgentService's: its directory is named in what to do

    async def stand_down(self) -> None:
        """Stop the sources and the relays' links (kept on disk, nothing deleted); logged once
        per refusal, not at every time the master is asked again."""
        async with self._assign_lock:
            sources, relays = list(self.sources.values()), list(self.relays)
            self.sources.clear()
            for running in sources:  # as when the agent stops: no hold ends, none is released
                running.scope.cancel()
            for mapping_id in relays:
                self._stop_relay(mapping_id)
                if self._server is not None:  # its parent's stream must stop spooling for them
                    await self._server.restart_session(mapping_id, "this node stood down")
            for running in sources:
                with anyio.move_on_after(RECEIVE_TIMEOUT_S):
                    await running.ended.wait()
            if self.stood_down:
                return
            self.stood_down = True
        logger.error(
            "the master refused this agent (revoked or removed from the fleet): stopped its "
            "%s source and %s relay mappings, whose folders, journals and state are kept; it "
            "resumes if the master takes it again, or join it again (stop it, delete %s, start "
            "it with --token <a new join token>)",
            len(sources),
            len(relays),
            self.identity.key_path.parent,
        )

    def taken_again(self) -> None:
        """The master sent an assignment: what it names runs again (call under the lock)."""
        if self.stood_down:
            self.stood_down = False
            logger.warning("the master took this agent again: resuming with its assignment")

"""The control link's notices: one-off messages for the master (held mass deletes and their
ends, failed hops), queued while the link is down, and the holds in force, told again at each
session so that a master that restarted (its event ring is in memory) shows them again."""

from __future__ import annotations

import collections

import msgspec

from relaysync.protocol.messages import HopFailed, MassDeleteEnded, MassDeleteHeld

Notice = MassDeleteHeld | MassDeleteEnded | HopFailed

MAX_QUEUED_NOTICES = 1000  # while the link is down; the oldest go first past it


class Notices:
    """The notices waiting for the master, oldest first, and the holds in force by mapping."""

    def __init__(self) -> None:
        self._queue: collections.deque[Notice] = collections.deque(maxlen=MAX_QUEUED_NOTICES)
        self._holds: dict[int, MassDeleteHeld] = {}
        self._hold_end = False  # this session's master takes MassDeleteEnded and resends

    def add(self, notice: Notice) -> None:
        """Queue `notice`; a hold's start or end also updates the holds in force."""
        if isinstance(notice, MassDeleteHeld):
            self._holds[notice.mapping_id] = notice
        elif isinstance(notice, MassDeleteEnded):
            held = self._holds.get(notice.mapping_id)
            if held is not None and _ends(notice, held):
                del self._holds[notice.mapping_id]
        self._queue.append(notice)

    def session_began(self, *, hold_end: bool) -> None:
        """A control session is up; `hold_end`: its master announced CAP_HOLD_END. Such a
        master is told the holds in force again (one that has them publishes nothing)."""
        self._hold_end = hold_end
        if any(isinstance(n, MassDeleteHeld) and n.resent for n in self._queue):  # unsent
            kept = [n for n in self._queue if not (isinstance(n, MassDeleteHeld) and n.resent)]
            self._queue = collections.deque(kept, maxlen=MAX_QUEUED_NOTICES)
        if hold_end:
            self._queue.extend(
                msgspec.structs.replace(held, resent=True) for held in self._holds.values()
            )

    def first(self) -> Notice | None:
        """The next notice for this session's master (an older master lacking CAP_HOLD_END is
        never sent a hold's end: it would end the link), or None."""
        while self._queue:
            notice = self._queue[0]
            if self._hold_end or not isinstance(notice, MassDeleteEnded):
                return notice
            self._queue.popleft()
        return None

    def sent(self) -> None:
        """The notice `first` returned went out."""
        self._queue.popleft()


def _ends(ended: MassDeleteEnded, held: MassDeleteHeld) -> bool:
    """Whether `ended` ends `held`: it names that hold, or none (0: whichever is in force). A
    late end of an older hold of the mapping (a source that stopped slowly, after its successor
    held) leaves the newer one in force."""
    return ended.hold == 0 or ended.hold == held.hold

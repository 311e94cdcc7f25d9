"""Commit ordering: a change is released for purging once every origin of the site that is up
has committed it (DESIGN.md: caches are refreshed only after the origins they fetch from commit).

Per change, keyed by (site, mapping, source, seq, path), the tracker keeps which origins reported the
change committed. An origin that is not up does not hold the others back; when it later reports
a change that was released without it (journal replay after it returns), the change is released
again, so that a cache that fetched from it meanwhile is refreshed once more. Catch-up work
outside the journal (seq 0) is released at once: it is that origin becoming current.

A seq names a change only within its mapping and its source's journal: a site re-pointed to
another mapping of the same source meets that mapping's seqs (the mapping is in the key), and a
source whose journal was recreated counts from 1 again. The journal is not in the key: an older
agent names none (""), and during a rolling upgrade one origin of a site reports a change with
its journal and another without (or an outbox written before the upgrade does), which must
still meet under one key. So each entry keeps the journal it was reported in, "" matches any
journal, and only two different named journals mean a different change at a reused seq and path:
the earlier one is then forgotten (released at once if still waiting) and the new one tracked
afresh. The path is in the key: a recreated journal's change at a seq still remembered from
older agents' reports (journal "") is another file's, which is neither taken for the released
one (never purged) nor releases a waiting one early (before its origins committed it). What the origins report a delete, rename or erase removed (the path's kind, the files
under it) is merged over them.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relaysync.protocol.messages import CommitRecord
from relaysync.purge.holds import PurgeHold, Waiters

logger = logging.getLogger(__name__)

HOLD_MAX_S = 30.0  # an origin that is up but never commits (failing) holds a change this long
REMEMBER_RELEASED = 100_000  # released changes remembered for origins that catch up later

# (site id, mapping id, source node, seq, path): the path too, since a seq names a change only
# within its source's journal and an older agent's report does not name it ("" is taken for any
# journal, `same_change`): a recreated journal's change at a remembered seq is another path's
Key = tuple[int, int, str, int, str]


@dataclass(frozen=True, slots=True)
class Released:
    """A change whose URLs may now be refreshed on the site's caches."""

    site_id: int
    op: str
    path: str
    new_path: str = ""  # for a rename
    again: bool = False  # refreshed before, without some origin that has now caught up
    # A delete, rename or erase: what the path was on the origins ("d" if on any, "" if any
    # did not say), the files and links they removed under it, and whether one listed only part.
    kind: str = ""
    removed: tuple[str, ...] = ()
    removed_truncated: bool = False
    # the reports whose acknowledgement waits for this change to be queued (purge/holds.py)
    waiters: Waiters = field(default_factory=Waiters, compare=False, repr=False)


@dataclass
class _Pending:
    op: str
    path: str
    new_path: str
    since: float
    origins: frozenset[str]  # the site's origins when the change was first reported
    journal: str  # the source journal its seq counts in ("": no report named it)
    committed: set[str] = field(default_factory=set)
    kind: str | None = None  # None: no origin reported yet
    removed: set[str] = field(default_factory=set)
    removed_truncated: bool = False
    waiters: Waiters = field(default_factory=Waiters)

    def add(self, record: CommitRecord) -> None:
        self.kind = record.kind if self.kind is None else merge_kinds(self.kind, record.kind)
        self.removed.update(record.removed)
        self.removed_truncated |= record.removed_truncated


@dataclass(slots=True)
class _Done:
    """A released change: its journal, and the origins that have committed it."""

    journal: str
    committed: set[str]
    waiters: Waiters  # its Released's: a report of it sent again waits until it is queued


def same_change(journal: str, other: str) -> bool:
    """Whether reports of one seq in journals `journal` and `other` name the same change: ""
    (an older agent's report, or one written before its upgrade) is taken for any journal."""
    return not journal or not other or journal == other


def merge_kinds(a: str, b: str) -> str:
    """The kind two origins' reports of one path make: unknown, else a directory, else either."""
    if "" in (a, b):
        return ""
    return "d" if "d" in (a, b) else a


def _released(
    site_id: int, record: CommitRecord, hold: PurgeHold | None, *, again: bool
) -> Released:
    released = Released(
        site_id,
        record.op,
        record.path,
        record.new_path,
        again=again,
        kind=record.kind,
        removed=record.removed,
        removed_truncated=record.removed_truncated,
    )
    released.waiters.add(hold)
    return released


class CommitTracker:
    """Which origins committed which change, and when a change may be purged."""

    def __init__(
        self, *, hold_max_s: float = HOLD_MAX_S, remember: int = REMEMBER_RELEASED
    ) -> None:
        self.hold_max_s = hold_max_s
        self._remember = remember
        self._pending: dict[Key, _Pending] = {}
        self._pending_per_site: Counter[int] = Counter()  # of `_pending`, kept with it
        self._released: OrderedDict[Key, _Done] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def has_pending(self, site_id: int) -> bool:
        """Whether the site has a change some origin has committed and not every one yet."""
        return self._pending_per_site[site_id] > 0

    def observe(
        self,
        *,
        site_id: int,
        mapping_id: int,
        origins: frozenset[str],
        source: str,
        target: str,
        records: Iterable[CommitRecord],
        states: Mapping[str, str],
        now: float,
        journal_id: str = "",
        hold: PurgeHold | None = None,
        out: list[Released] | None = None,
    ) -> list[Released]:
        """Fold commits reported by `target` (an origin of the site) of changes `mapping_id`
        carried from `source`, whose seqs count in its journal `journal_id` ("": not named);
        return what is released, appended to `out` if given (so that it is not lost if this
        raises midway). `hold` (the report's) waits for each change it names to be queued,
        released now or later."""
        out = [] if out is None else out
        for record in records:
            if not record.ok:
                continue
            if record.seq == 0:
                out.append(_released(site_id, record, hold, again=True))
                continue
            key = (site_id, mapping_id, source, record.seq, record.path)
            if self._released_before(key, target, record, journal_id, out, hold):
                continue
            pending = self._pending_for(key, origins, record, journal_id, now, out)
            if target not in pending.committed:
                pending.add(record)
            pending.committed.add(target)
            pending.waiters.add(hold)
            if self._ready(key, pending, states, now):
                out.append(self._release(key, pending))
        return out

    def _released_before(
        self,
        key: Key,
        target: str,
        record: CommitRecord,
        journal: str,
        out: list[Released],
        hold: PurgeHold | None,
    ) -> bool:
        """Whether `record` is of the change released under `key`: if `target` had not
        committed it yet, it is released again; else `hold` waits for the release to be queued
        (done at once if it is). One of another journal is a different change: the released
        one is forgotten."""
        done = self._released.get(key)
        if done is None:
            return False
        if not same_change(done.journal, journal):
            del self._released[key]
            return False
        done.journal = done.journal or journal
        if target not in done.committed:
            done.committed.add(target)
            again = _released(key[0], record, hold, again=True)
            done.waiters = again.waiters  # a report of it sent again waits for this one
            out.append(again)
        else:
            done.waiters.add(hold)
        return True

    def _pending_for(
        self,
        key: Key,
        origins: frozenset[str],
        record: CommitRecord,
        journal: str,
        now: float,
        out: list[Released],
    ) -> _Pending:
        """The waiting change `record` is of, new if none is. One of another journal waiting
        under `key` is released at once (what its origins committed is refreshed) and
        forgotten: reports of it from now on could not be told from the new change's."""
        pending = self._pending.get(key)
        if pending is not None and not same_change(pending.journal, journal):
            logger.info(
                "change %s of site %s: journal %s replaced by %s, released without waiting",
                key[3],
                key[0],
                pending.journal,
                journal,
            )
            out.append(self._release(key, pending, remember=False))
            pending = None
        if pending is None:
            self._pending_per_site[key[0]] += 1
            pending = self._pending[key] = _Pending(
                record.op, record.path, record.new_path, now, origins, journal
            )
        pending.journal = pending.journal or journal
        return pending

    def sweep(self, states: Mapping[str, str], now: float) -> list[Released]:
        """Release what no longer waits: origins went down, or held past hold_max_s."""
        out = []
        for key, pending in list(self._pending.items()):
            if self._ready(key, pending, states, now):
                out.append(self._release(key, pending))
        return out

    def forget_site(self, site_id: int) -> list[Released]:
        """Forget the site's waiting changes; returns them released, for the purger's intake
        to let the reports that wait for them go (it plans nothing for a site it does not
        have), on the event loop's thread."""
        keys = [k for k in self._pending if k[0] == site_id]
        released = [self._release(k, self._pending[k], remember=False) for k in keys]
        self._pending_per_site.pop(site_id, None)
        return released

    def _ready(self, key: Key, pending: _Pending, states: Mapping[str, str], now: float) -> bool:
        required = {o for o in pending.origins if states.get(o) == "up"}
        if required <= pending.committed:
            return True
        if now - pending.since >= self.hold_max_s:
            logger.warning(
                "change %s of site %s released after %.0f s without origins %s",
                key[3],
                key[0],
                now - pending.since,
                sorted(required - pending.committed),
            )
            return True
        return False

    def _release(self, key: Key, pending: _Pending, *, remember: bool = True) -> Released:
        del self._pending[key]
        self._pending_per_site[key[0]] -= 1
        if remember:
            self._released[key] = _Done(pending.journal, set(pending.committed), pending.waiters)
            while len(self._released) > self._remember:
                self._released.popitem(last=False)
        return Released(
            key[0],
            pending.op,
            pending.path,
            pending.new_path,
            kind=pending.kind or "",
            removed=tuple(sorted(pending.removed)),
            removed_truncated=pending.removed_truncated,
            waiters=pending.waiters,
        )

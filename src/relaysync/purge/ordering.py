"""Commit ordering: a change is released for purging once every origin of the site that is up
has committed it (DESIGN.md: caches are refreshed only after the origins they fetch from commit).

Per change, keyed by (site, mapping, source, source journal, seq), the tracker keeps which origins reported the change committed. An origin
that is not up does not hold the others back; when it later reports a change that was released
without it (journal replay after it returns), the change is released again, so that a cache
that fetched from it meanwhile is refreshed once more. Catch-up work outside the journal
(seq 0) is released at once: it is that origin becoming current. A seq names a change only
within its mapping and its source's journal: a site re-pointed to another mapping of the same
source, or a source whose journal was recreated (seqs from 1 again), reuses seqs for other
changes, which must not be taken for ones already released. (Reports of an older agent name no
journal: theirs share the key "", as before.) What the origins report a
delete, rename or erase removed (the path's kind, the files under it) is merged over them.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relaysync.protocol.messages import CommitRecord

logger = logging.getLogger(__name__)

HOLD_MAX_S = 30.0  # an origin that is up but never commits (failing) holds a change this long
REMEMBER_RELEASED = 100_000  # released changes remembered for origins that catch up later

Key = tuple[int, int, str, str, int]  # (site id, mapping id, source node, journal id, seq)


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


@dataclass
class _Pending:
    op: str
    path: str
    new_path: str
    since: float
    committed: set[str] = field(default_factory=set)
    kind: str | None = None  # None: no origin reported yet
    removed: set[str] = field(default_factory=set)
    removed_truncated: bool = False

    def add(self, record: CommitRecord) -> None:
        self.kind = record.kind if self.kind is None else merge_kinds(self.kind, record.kind)
        self.removed.update(record.removed)
        self.removed_truncated |= record.removed_truncated


def merge_kinds(a: str, b: str) -> str:
    """The kind two origins' reports of one path make: unknown, else a directory, else either."""
    if "" in (a, b):
        return ""
    return "d" if "d" in (a, b) else a


def _released(site_id: int, record: CommitRecord, *, again: bool) -> Released:
    return Released(
        site_id,
        record.op,
        record.path,
        record.new_path,
        again=again,
        kind=record.kind,
        removed=record.removed,
        removed_truncated=record.removed_truncated,
    )


class CommitTracker:
    """Which origins committed which change, and when a change may be purged."""

    def __init__(
        self, *, hold_max_s: float = HOLD_MAX_S, remember: int = REMEMBER_RELEASED
    ) -> None:
        self.hold_max_s = hold_max_s
        self._remember = remember
        self._pending: dict[Key, _Pending] = {}
        self._pending_per_site: Counter[int] = Counter()  # of `_pending`, kept with it
        self._released: OrderedDict[Key, set[str]] = OrderedDict()
        self._origins: dict[Key, frozenset[str]] = {}

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
    ) -> list[Released]:
        """Fold commits reported by `target` (an origin of the site) of changes `mapping_id`
        carried from `source`, whose seqs count in its journal `journal_id` ("": not named);
        return what is released."""
        out: list[Released] = []
        for record in records:
            if not record.ok:
                continue
            if record.seq == 0:
                out.append(_released(site_id, record, again=True))
                continue
            key = (site_id, mapping_id, source, journal_id, record.seq)
            done = self._released.get(key)
            if done is not None:
                if target not in done:
                    done.add(target)
                    out.append(_released(site_id, record, again=True))
                continue
            pending = self._pending.get(key)
            if pending is None:
                self._pending_per_site[site_id] += 1
                pending = self._pending[key] = _Pending(
                    record.op, record.path, record.new_path, now
                )
                self._origins[key] = origins
            if target not in pending.committed:
                pending.add(record)
            pending.committed.add(target)
            if self._ready(key, pending, states, now):
                out.append(self._release(key, pending))
        return out

    def sweep(self, states: Mapping[str, str], now: float) -> list[Released]:
        """Release what no longer waits: origins went down, or held past hold_max_s."""
        out = []
        for key, pending in list(self._pending.items()):
            if self._ready(key, pending, states, now):
                out.append(self._release(key, pending))
        return out

    def forget_site(self, site_id: int) -> None:
        for key in [k for k in self._pending if k[0] == site_id]:
            del self._pending[key]
            self._origins.pop(key, None)
        self._pending_per_site.pop(site_id, None)

    def _ready(self, key: Key, pending: _Pending, states: Mapping[str, str], now: float) -> bool:
        required = {o for o in self._origins.get(key, ()) if states.get(o) == "up"}
        if required <= pending.committed:
            return True
        if now - pending.since >= self.hold_max_s:
            logger.warning(
                "change %s of site %s released after %.0f s without origins %s",
                key[4],
                key[0],
                now - pending.since,
                sorted(required - pending.committed),
            )
            return True
        return False

    def _release(self, key: Key, pending: _Pending) -> Released:
        del self._pending[key]
        self._pending_per_site[key[0]] -= 1
        self._origins.pop(key, None)
        self._released[key] = set(pending.committed)
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
        )

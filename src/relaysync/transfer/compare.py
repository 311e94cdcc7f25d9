"""Top-down comparison of a source manifest with a target's, yielding the ops that converge them.

Directory hashes make equal subtrees cost one entry: the source asks the target for the
listings of the directories whose hashes differ, level by level, and only descends there.
A target in sync costs one round trip with the root listing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import anyio

from relaysync.errors import ProtocolError
from relaysync.protocol.messages import (
    MAX_ERASE_KEEP,
    AnyMessage,
    Delete,
    DirEntry,
    DirListing,
    Erase,
    SetAttr,
)
from relaysync.watch.manifest import Entry, Manifest

RequestFn = Callable[
    [Sequence[str], bool, str], Awaitable[Sequence[DirListing]]
]  # dirs, hashes_only, after
DIRS_PER_REQUEST = 64  # listings asked for in one round trip
# A target lists a directory in pages (transfer/receiver.py: at most 20,000 entries and 2 MiB a
# page, so 7,000 names of NAME_MAX bytes): a directory of a million files is 50 to 150 pages. A
# target that pages on past these bounds for one directory is hostile or broken: the session
# ends (ProtocolError). Its pages are compared as they come and never held together.
MAX_DIR_PAGES = 65_536
MAX_DIR_ENTRIES = 16 * 1024 * 1024
EmitFn = Callable[[Sequence["Work"]], Awaitable[None]]


@dataclass(frozen=True)
class Unreadable:
    """The source paths that are there but cannot be read now (agent/_unreadable_recheck.py):
    `files` not readable to hash, `dirs` not listable. The source manifest does not hold what it
    could not see of them, which is no reason to delete it on a target: a comparison keeps the
    names of both on the target, and compares nothing at or below an unlistable directory
    (nothing sent, nothing erased there). An unlistable root: no comparison at all. `complete`
    False: there are more than these (a relay told a set cut to the wire's bounds, see
    transfer/relay_unreadable.py), so a comparison erases nothing at all."""

    files: frozenset[str] = frozenset()
    dirs: frozenset[str] = frozenset()
    complete: bool = True
    _names: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: dict[str, set[str]] = {}
        for path in self.files | self.dirs:
            parent, _, name = path.rpartition("/")
            if name:
                names.setdefault(parent, set()).add(name)
        object.__setattr__(self, "_names", {k: frozenset(v) for k, v in names.items()})

    def names_in(self, directory: str) -> frozenset[str]:
        """The names of unreadable files and unlistable directories directly in `directory`."""
        return self._names.get(directory, frozenset())


NOTHING_UNREADABLE = Unreadable()


@dataclass(frozen=True)
class Work:
    """One unit of catch-up: a ready message, an entry to create, or a subtree to send whole."""

    message: AnyMessage | None = None
    entry: Entry | None = None
    subtree: str | None = None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _DirDiff:
    """The comparison of one directory: the target's listing is fed a page at a time, checked,
    and compared with ours as it comes, so only our own listing is held, never all of theirs.

    `erase=False` (a member of an N:M job): names only the target has are left alone.
    """

    def __init__(
        self, mine: DirListing, *, erase: bool, unreadable: Unreadable = NOTHING_UNREADABLE
    ) -> None:
        self.mine = mine
        self.descend: list[str] = []  # child directories whose hashes differ
        self.last = ""  # the target's last name so far: the next page starts after it
        self.pages = 0
        self._erase = erase
        self._exists = True
        self._entries = 0
        self._mine = {e.name: e for e in mine.entries}
        self._matched: set[str] = set()
        self._erase_all = False  # names only the target has, to go in one Erase at the end
        # Names the source has but could not read or list now: never erased nor deleted.
        self._kept = unreadable.names_in(mine.path)

    def page(self, theirs: DirListing) -> list[Work]:
        """Return the work for the names of one page of the target's listing.

        Raises:
            ProtocolError: names not in strictly increasing order past the previous page, a
                continuation that brings nothing but asks for more, or over the per-directory bounds.
        """
        self.pages += 1
        self._entries += len(theirs.entries)
        if self.pages > MAX_DIR_PAGES or self._entries > MAX_DIR_ENTRIES:
            raise ProtocolError(
                f"listing of {self.mine.path!r}: over {MAX_DIR_PAGES} pages or "
                f"{MAX_DIR_ENTRIES} entries"
            )
        if self.pages == 1:
            self._exists = theirs.exists
        elif theirs.more and not theirs.entries:
            raise ProtocolError(
                f"listing of {self.mine.path!r}: a page of no entries that asks for more"
            )
        if not self._exists:
            return []
        work: list[Work] = []
        for e in theirs.entries:
            if e.name <= self.last:
                raise ProtocolError(
                    f"listing of {self.mine.path!r}: {e.name[:80]!r} not after {self.last[:80]!r}"
                )
            self.last = e.name
            mine = self._mine.get(e.name)
            if mine is not None:
                self._matched.add(e.name)
                work.extend(self._compare(mine, e))
            elif not self._erase or e.name in self._kept:
                continue
            elif len(self._mine) + len(self._kept) <= MAX_ERASE_KEEP:
                self._erase_all = True
            else:  # our names would not fit one Erase: each of theirs goes on its own
                work.append(Work(message=Delete(seq=0, path=_join(self.mine.path, e.name))))
        return work

    def finish(self) -> list[Work]:
        """Return the rest of the work, once the target's last page is in: the Erase of the
        names only it has, and what it lacks."""
        work: list[Work] = []
        if self._erase_all:
            work.append(
                Work(
                    message=Erase(
                        seq=0, path=self.mine.path, keep=tuple(sorted(self._kept.union(self._mine)))
                    )
                )
            )
        for e in self.mine.entries:
            if e.name not in self._matched:
                work.extend(self._compare(e, None))
        return work

    def _compare(self, e: DirEntry, other: DirEntry | None) -> list[Work]:
        path = _join(self.mine.path, e.name)
        if e.name in self._kept:  # not known as it is now: nothing of it goes, nor goes away
            return []
        work: list[Work] = []
        if other is not None and other.kind != e.kind:
            work.append(Work(message=Delete(seq=0, path=path)))
            other = None
        if e.kind == "d":
            if other is None:
                work.append(Work(subtree=path))
            elif other.hash != e.hash:
                self.descend.append(path)
        elif other is None or other.hash != e.hash or other.size != e.size:
            work.append(Work(entry=_entry(path, e)))
        elif (other.mode, other.mtime_ns) != (e.mode, e.mtime_ns):
            work.append(Work(message=SetAttr(seq=0, path=path, mode=e.mode, mtime_ns=e.mtime_ns)))
        return work


def diff_listing(
    mine: DirListing, theirs: DirListing, *, erase: bool = True
) -> tuple[list[Work], list[str]]:
    """Return the work for one directory, given the target's whole listing of it, and the child
    directories to descend into.

    `erase=False` (a member of an N:M job): names only the target has are left alone.

    Raises:
        ProtocolError: the target's names are not in strictly increasing order.
    """
    diff = _DirDiff(mine, erase=erase)
    work = diff.page(theirs)
    return work + diff.finish(), diff.descend


def _entry(path: str, e: DirEntry) -> Entry:
    return Entry(path=path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns, mode=e.mode, hash=e.hash)


def iter_subtree(manifest: Manifest, path: str) -> Iterator[Entry]:
    """Yield the entry at `path` and everything under it, parents before children."""
    entry = manifest.get(path)
    if entry is None:
        return
    yield entry
    if entry.kind != "d":
        return
    stack = [path]
    while stack:
        current = stack.pop()
        for child in manifest.children(current):
            yield child
            if child.kind == "d":
                stack.append(child.path)


async def _ask(
    request: RequestFn, dirs: Sequence[str], hashes_only: bool, after: str
) -> Sequence[DirListing]:
    """The target's listings of `dirs`, checked to be those asked for."""
    listings = await request(dirs, hashes_only, after)
    if [listing.path for listing in listings] != list(dirs):
        raise ProtocolError("digest reply: not the directories asked for")
    return listings


async def _compare_dirs(
    manifest: Manifest,
    request: RequestFn,
    emit: EmitFn,
    dirs: Sequence[str],
    *,
    erase: bool,
    unreadable: Unreadable,
) -> tuple[int, list[str]]:
    """Compare `dirs` (at most DIRS_PER_REQUEST), following listings the target cut short, and
    emit the work; return how many items were emitted and the directories to descend into."""
    mine = await anyio.to_thread.run_sync(_listings, manifest, dirs)
    emitted, descend = 0, []
    for m, page in zip(mine, await _ask(request, dirs, False, ""), strict=True):
        diff = _DirDiff(m, erase=erase, unreadable=unreadable)
        while True:
            work = diff.page(page)
            if work:
                await emit(work)
                emitted += len(work)
            if not (page.more and page.exists):
                break
            (page,) = await _ask(request, [m.path], False, diff.last)
        work = diff.finish()
        if work:
            await emit(work)
            emitted += len(work)
        descend.extend(diff.descend)
    return emitted, descend


def _listings(manifest: Manifest, dirs: Sequence[str]) -> list[DirListing]:
    return [manifest.dir_listing(d) for d in dirs]


async def compare_trees(
    manifest: Manifest,
    request: RequestFn,
    emit: EmitFn,
    *,
    erase: bool = True,
    unreadable: Unreadable = NOTHING_UNREADABLE,
) -> int:
    """Compare top-down and emit the work, level by level; return how many items were emitted.

    The first round trip carries only the root hashes, so a target in sync costs ~100 bytes.
    `unreadable`: the source paths there but not readable now, kept as they are on the target.
    """
    if "" in unreadable.dirs:  # nothing of the source is known as it is now (the caller logs it)
        return 0
    mine_root = await anyio.to_thread.run_sync(manifest.root_hash)
    (theirs_root,) = await _ask(request, [""], True, "")
    if theirs_root.hash == mine_root:
        return 0
    level = [""]
    emitted = 0
    while level:
        next_level: list[str] = []
        for start in range(0, len(level), DIRS_PER_REQUEST):
            count, descend = await _compare_dirs(
                manifest,
                request,
                emit,
                level[start : start + DIRS_PER_REQUEST],
                erase=erase,
                unreadable=unreadable,
            )
            emitted += count
            next_level.extend(descend)
        level = next_level
    return emitted

"""Top-down comparison of a source manifest with a target's, yielding the ops that converge them.

Directory hashes make equal subtrees cost one entry: the source asks the target for the
listings of the directories whose hashes differ, level by level, and only descends there.
A target in sync costs one round trip with the root listing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import anyio

from relaysync.protocol.messages import AnyMessage, Delete, DirEntry, DirListing, Erase, SetAttr
from relaysync.watch.manifest import Entry, Manifest

RequestFn = Callable[[Sequence[str], bool, str], Awaitable[Sequence[DirListing]]]  # dirs, hashes_only, after
DIRS_PER_REQUEST = 64  # listings asked for in one round trip
EmitFn = Callable[[Sequence["Work"]], Awaitable[None]]


@dataclass(frozen=True)
class Work:
    """One unit of catch-up: a ready message, an entry to create, or a subtree to send whole."""

    message: AnyMessage | None = None
    entry: Entry | None = None
    subtree: str | None = None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def diff_listing(mine: DirListing, theirs: DirListing, *, erase: bool = True) -> tuple[list[Work], list[str]]:
    """Return the work for one directory and the child directories to descend into.

    `erase=False` (a member of an N:M job): names only the target has are left alone.
    """
    work: list[Work] = []
    descend: list[str] = []
    their_entries: dict[str, DirEntry] = {e.name: e for e in theirs.entries} if theirs.exists else {}
    my_names = {e.name for e in mine.entries}
    if erase and theirs.exists and set(their_entries) - my_names:
        work.append(Work(message=Erase(seq=0, path=mine.path, keep=tuple(sorted(my_names)))))
    for e in mine.entries:
        path = _join(mine.path, e.name)
        other = their_entries.get(e.name)
        if other is not None and other.kind != e.kind:
            work.append(Work(message=Delete(seq=0, path=path)))
            other = None
        if e.kind == "d":
            if other is None:
                work.append(Work(subtree=path))
            elif other.hash != e.hash:
                descend.append(path)
        elif other is None or other.hash != e.hash or other.size != e.size:
            work.append(Work(entry=_entry(path, e)))
        elif (other.mode, other.mtime_ns) != (e.mode, e.mtime_ns):
            work.append(Work(message=SetAttr(seq=0, path=path, mode=e.mode, mtime_ns=e.mtime_ns)))
    return work, descend


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


async def _their_listings(request: RequestFn, dirs: Sequence[str]) -> list[DirListing]:
    """The target's listings of `dirs`, in bounded requests, following listings cut short."""
    out: list[DirListing] = []
    for start in range(0, len(dirs), DIRS_PER_REQUEST):
        for listing in await request(dirs[start : start + DIRS_PER_REQUEST], False, ""):
            entries = list(listing.entries)
            while listing.more:
                after = entries[-1].name if entries else ""
                (listing,) = await request([listing.path], False, after)
                entries.extend(listing.entries)
            out.append(DirListing(path=listing.path, entries=tuple(entries), exists=listing.exists))
    return out


def _listings(manifest: Manifest, dirs: Sequence[str]) -> list[DirListing]:
    return [manifest.dir_listing(d) for d in dirs]


async def compare_trees(manifest: Manifest, request: RequestFn, emit: EmitFn, *, erase: bool = True) -> int:
    """Compare top-down and emit the work, level by level; return how many items were emitted.

    The first round trip carries only the root hashes, so a target in sync costs ~100 bytes.
    """
    mine_root = await anyio.to_thread.run_sync(manifest.root_hash)
    (theirs_root,) = await request([""], True, "")
    if theirs_root.hash == mine_root:
        return 0
    level = [""]
    emitted = 0
    while level:
        mine = await anyio.to_thread.run_sync(_listings, manifest, level)
        theirs = await _their_listings(request, level)
        next_level: list[str] = []
        for m, t in zip(mine, theirs, strict=True):
            work, descend = diff_listing(m, t, erase=erase)
            if work:
                await emit(work)
                emitted += len(work)
            next_level.extend(descend)
        level = next_level
    return emitted

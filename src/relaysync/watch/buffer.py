"""The change buffer: coalesces one batch of watcher events without changing what it means."""

from __future__ import annotations

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.manifest import ancestors

# Events that the recorder answers by re-reading the path's current state from disk.
_RESTAT_KINDS = frozenset({"write", "modify", "attr", "symlink", "mkdir"})


def coalesce(events: list[FsEvent], *, keep_closed: bool = False) -> list[FsEvent]:
    """Drop events that an earlier event of the same batch already covers; keep order otherwise.

    A batch is processed after it is read whole, so each path's current state is read once
    anyway: a repeated event of the same kind and path adds nothing, and neither does a
    write/attr/symlink/mkdir/rescan below a directory an earlier "rescan" covers. A "delete" or
    "move" ends every such cover, because what follows it describes a new state.

    With `keep_closed`, a "write" below a rescan stays (once): it also says the file was closed
    after writing, which a scan cannot tell (`mkdir d; echo x > d/f`: the source holds back
    what a scan finds recently modified unless it was closed). The consumer notes the closed
    files, then coalesces again without it.
    """
    out: list[FsEvent] = []
    seen: set[tuple[str, str]] = set()
    rescanned: set[str] = set()
    for event in events:
        if event.kind in ("delete", "move"):
            seen.clear()
            rescanned.clear()
            out.append(event)
            continue
        kind = event.kind
        key = (kind, event.path)
        if key in seen or (_covered(event, rescanned) and not (keep_closed and kind == "write")):
            continue
        seen.add(key)
        if event.kind == "rescan":
            rescanned.add(event.path)
        out.append(event)
    return out


def _covered(event: FsEvent, rescanned: set[str]) -> bool:
    if not rescanned or (event.kind not in _RESTAT_KINDS and event.kind != "rescan"):
        return False
    return event.path in rescanned or any(a in rescanned for a in ancestors(event.path))

"""The watcher's event type, apart from the watcher so that pure modules can use it."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

# "write": closed after writing (CLOSE_WRITE); "modify": changed or created with no close-write
# (yet): a writer may still have it open.
EventKind = Literal["write", "modify", "delete", "move", "attr", "rescan", "symlink", "mkdir"]


class FsEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One file-system change seen under a watched root; paths are relative POSIX, "" = root."""

    kind: EventKind
    path: str
    new_path: str = ""
    is_dir: bool = False


# The name an O_TMPFILE file has until it is linked into a directory (linkat): "#" and its inode
# number. Its close-write is reported under that name, which never exists on disk.
_ANONYMOUS = re.compile(r"#([0-9]+)")


def anonymous_inode(path: str) -> int | None:
    """The inode number in `path`'s name if that is an O_TMPFILE file's anonymous name."""
    match = _ANONYMOUS.fullmatch(path.rpartition("/")[2])
    return int(match[1]) if match else None

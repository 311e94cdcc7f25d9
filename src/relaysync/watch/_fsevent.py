"""The watcher's event type, apart from the watcher so that pure modules can use it."""

from __future__ import annotations

from typing import Literal

import msgspec

EventKind = Literal["write", "delete", "move", "attr", "rescan", "symlink", "mkdir"]


class FsEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One file-system change seen under a watched root; paths are relative POSIX, "" = root."""

    kind: EventKind
    path: str
    new_path: str = ""
    is_dir: bool = False

"""What a target lets land in its folder: which symlinks, and which permission bits.

A target is usually a web server: a symlink that points outside its folder makes it serve what
lies there (`passwd -> /etc/passwd`), and a world-writable file or directory lets any local user
change what it serves. Like rsync's `--safe-links` and `--chmod=Do-w,Fo-w`, a target refuses the
first and strips the second unless its mapping says otherwise.

The target's manifest records what the source asked for (its link, its mode), not what the policy
made of it, so that the comparisons with the source (directory hashes, listings) see no
difference to send again for ever; the target's start-up scan reads its disk through the same
policy (`same_mode`, `keeps_absent`).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

SymlinkPolicy = Literal["safe", "any"]
SYMLINK_POLICIES: tuple[SymlinkPolicy, ...] = ("safe", "any")
DEFAULT_MODE_MASK = 0o002  # o-w for files and directories (rsync --chmod=Do-w,Fo-w)


def link_escapes(path: str, target: str) -> bool:
    """Whether the symlink at relative `path` may point outside the folder: an absolute target,
    one whose leading ".." climb above the folder's root from the link's own directory, or one
    with a ".." after a name (`a/../..`: where it leads depends on what `a` is, and a link `a`
    that points up, itself safe, would take it out)."""
    if not target or target.startswith("/"):
        return True
    here = posixpath.dirname(path)
    depth = len(here.split("/")) if here else 0
    descended = False
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0 or descended:
                return True
        elif part not in ("", "."):
            descended = True
    return False


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """A target folder's policy.

    Args:
        symlinks: "safe" refuses a link that points outside the folder (`link_escapes`); "any"
            takes every link as the source has it.
        mode_mask: permission bits removed from every file and directory written (0 = keep all).
    """

    symlinks: SymlinkPolicy = "safe"
    mode_mask: int = DEFAULT_MODE_MASK

    def refuses_link(self, path: str, target: str) -> str:
        """Why the link at `path` is refused ("" if it is not), with the remedy."""
        if self.symlinks != "safe" or not link_escapes(path, target):
            return ""
        return (
            f"symlink to {target[:200]!r} points outside the folder, refused by the symlink "
            'policy "safe"; set the mapping\'s symlink policy to "any" if you trust the source'
        )

    def disk_mode(self, mode: int) -> int:
        """The permission bits a mode the source asked for gets on this target's disk."""
        return mode & 0o777 & ~self.mode_mask

    def same_mode(self, recorded: int, on_disk: int) -> bool:
        """Whether a mode on disk is what this policy made of the `recorded` one (asked)."""
        return self.disk_mode(recorded) == on_disk & 0o777

    def keeps_absent(self, kind: str, path: str, target: str) -> bool:
        """Whether a manifest entry with nothing on disk stays: a link this policy refused."""
        return kind == "l" and bool(self.refuses_link(path, target))


def tighten_in(dir_fd: int, name: str, mode: int) -> None:
    """Set the permission bits of `name` in `dir_fd` to `mode` through a descriptor of it, never
    through a link (a name swapped for one meanwhile is left alone); a failure is logged: the
    start-up scan that found bits its policy removes (a folder written before it) goes on."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError as exc:
        logger.warning("could not remove mode bits of %s: %s", name, exc)
        return
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        logger.warning("could not remove mode bits of %s: %s", name, exc)
    finally:
        os.close(fd)

"""Synchronization and backup: the previous versions of replaced and deleted files on a target.

A mapping can keep the last N versions of every file its target replaces or deletes, in a
folder beside the served tree (`<target>.versions/`), never inside it. A version is a hard link
to the old inode (no copy; a copy only across file systems), named `<name>@<UTC time>`; the
oldest beyond N are removed. `restore` puts one back atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

from relaysync._util.fs import make_dirs_at, walk_in
from relaysync.constants import MAX_NAME_BYTES, TEMP_PREFIX
from relaysync.errors import NotFound
from relaysync.transfer.paths import check_relpath
from relaysync.transfer.staging import temp_name_for

logger = logging.getLogger(__name__)

SEPARATOR = "@"


def versions_dir_for(root: Path) -> Path:
    """Where the versions of a target folder live: beside it, outside the served tree."""
    return root.with_name(root.name + ".versions")


class VersionKeeper:
    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.dir = versions_dir_for(root)
        self.keep = keep

    def save(self, final: Path) -> None:
        """Keep the file (or every file of the tree) at `final` before it is replaced or deleted."""
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            top = final.relative_to(self.root).as_posix()
            for _fd, reldir, entries in walk_in(self.root, top):  # any depth, never through a link
                for entry in entries:
                    if entry.is_file(follow_symlinks=False) and not entry.name.startswith(
                        TEMP_PREFIX
                    ):
                        self._save_file(self.root / reldir / entry.name)
        elif stat.S_ISREG(st.st_mode):
            self._save_file(final)

    def _save_file(self, path: Path) -> None:
        rel = path.relative_to(self.root)
        stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{rel.name}{SEPARATOR}{stamp}"
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            # Replication wins over history: failing here would block every change after this one.
            logger.warning(
                "no version kept of %s: its name leaves no room for a timestamp (NAME_MAX %s)",
                rel,
                MAX_NAME_BYTES,
            )
            return
        dest = self.dir / rel.parent / name
        self.dir.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # any depth (pathlib's mkdir recurses)
            os.close(make_dirs_at(dir_fd, rel.parent.as_posix() if rel.parent.parts else "")[0])
        finally:
            os.close(dir_fd)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)  # another file system, or links not allowed
        self._prune(dest.parent, rel.name)

    def _prune(self, folder: Path, name: str) -> None:
        for old in self._list(folder, name)[: -self.keep or None]:
            old.unlink(missing_ok=True)

    @staticmethod
    def _list(folder: Path, name: str) -> list[Path]:
        prefix = name + SEPARATOR
        try:
            return sorted(p for p in folder.iterdir() if p.name.startswith(prefix))
        except FileNotFoundError:
            return []

    def versions(self, rel: str) -> list[str]:
        """The kept versions of `rel`, oldest first, as their time stamps."""
        check_relpath(rel)
        parent, _, name = rel.rpartition("/")
        return [p.name.rpartition(SEPARATOR)[2] for p in self._list(self.dir / parent, name)]

    def restore(self, rel: str, version: str | None = None) -> str:
        """Put a kept version of `rel` back in the served tree (the newest if none is named).

        Returns:
            the version restored.

        Raises:
            NotFound: no such version kept.
        """
        kept = self.versions(rel)
        chosen = version or (kept[-1] if kept else None)
        if chosen is None or chosen not in kept:
            raise NotFound("version", f"{rel}{SEPARATOR}{version or 'latest'}")
        source = self.dir / f"{rel}{SEPARATOR}{chosen}"
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_name_for(final)
        shutil.copy2(source, temp)
        os.replace(temp, final)
        logger.info("restored %s from version %s", rel, chosen)
        return chosen

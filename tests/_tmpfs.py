"""Real tmpfs and bind mounts for tests of an unmounted folder or a full disk (root only: a test
skips without them)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def mount_tmpfs(where: Path, size: str = "64m") -> None:
    """Mount a fresh tmpfs of `size` at `where` (made if missing); skip the test if that is not
    permitted."""
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def bind_mount(source: Path, where: Path) -> None:
    """Bind-mount the directory `source` at `where` (made if missing); skip the test if that is
    not permitted."""
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "--bind", str(source), str(where)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


def remount_copy(backup: Path, where: Path, staging: Path) -> None:
    """Mount a fresh tmpfs holding a copy of `backup` at `where`, whole at once (mount --move):
    the disk comes back with what it held."""
    mount_tmpfs(staging)
    for entry in backup.iterdir():
        dest = staging / entry.name
        if entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True)  # copy2: mtimes kept
        else:
            shutil.copy2(entry, dest)
    shutil.copystat(backup, staging)
    subprocess.run(["mount", "--move", str(staging), str(where)], check=True)


@contextmanager
def unmounted_at_exit(*paths: Path) -> Iterator[None]:
    """Lazily unmount whatever is still mounted at `paths` when the test ends."""
    try:
        yield
    finally:
        for path in paths:
            for _ in range(4):  # stacked mounts, each unmounted in turn
                if subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode:
                    break
                subprocess.run(["umount", "-l", str(path)], check=False)

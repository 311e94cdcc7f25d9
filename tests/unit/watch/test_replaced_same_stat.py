"""A file replaced with one of the same size and mtime but new content is recorded.

Deploys do this: `rsync -a --checksum` or `-I`, `cp -p` + `mv`, `shutil.copy2` + `os.replace`,
reproducible builds (SOURCE_DATE_EPOCH, npm's 1985 mtimes). Size, mtime and mode match the
manifest; only the inode number (a rename) or the event (a name deleted and made again, whose
inode number ext4 reuses) tells the content may be new, and its hash says whether it is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import xxhash
from tests.unit.watch._replay import (
    ModelTarget,
    assert_in_step,
    ev,
    settle,
    wait_for,
    watching,
)

from relaysync.watch import scanner
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import scan

EPOCH_NS = 499_162_500_000_000_000  # a build's fixed mtime (npm tarballs: 1985-10-26)


def _same_stat(path: Path, content: bytes) -> None:
    """Write `content` to `path` (in place if it exists) with a build's fixed mtime."""
    path.write_bytes(content)
    os.utime(path, ns=(EPOCH_NS, EPOCH_NS))


def _start(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    _same_stat(tree / "version.txt", b"1.2.3\n")
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


@pytest.mark.anyio
async def test_a_copy_renamed_over_the_file_is_recorded_with_its_new_hash(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """`shutil.copy2(build/version.txt, tmp)` then `os.replace(tmp, version.txt)`: the watcher
    reports the temp's write (gone when detected) and its move onto version.txt."""
    rec, target = _start(tree, manifest)
    (tmp_path / "build").mkdir()
    _same_stat(tmp_path / "build" / "version.txt", b"1.2.4\n")
    async with watching(tree) as batches:
        shutil.copy2(tmp_path / "build" / "version.txt", tree / ".version.txt.tmp")
        os.replace(tree / ".version.txt.tmp", tree / "version.txt")
        await wait_for(lambda: any(e.kind == "move" for b in batches for e in b))
    changes = settle(rec, target, [e for b in batches for e in b])
    assert [(c.op, c.path) for c in changes] == [("write", "version.txt")]
    entry = manifest.get("version.txt")
    assert entry is not None and entry.hash == xxhash.xxh3_128(b"1.2.4\n").digest()
    assert entry.ino == os.lstat(tree / "version.txt").st_ino
    assert_in_step(tree, manifest, target)


def test_a_rescan_hashes_a_file_under_another_inode_number(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """The periodic and start-up rescans heal what the events missed: a file whose inode number
    is not the manifest's is hashed; replaced by an equal one, it only gets an inode fix."""
    _start(tree, manifest)
    _same_stat(tmp_path / "new", b"1.2.4\n")
    os.replace(tmp_path / "new", tree / "version.txt")
    result = scan(tree, manifest, PathFilter())
    [change] = result.out
    assert change.op == "write" and change.entry is not None
    assert change.entry.hash == xxhash.xxh3_128(b"1.2.4\n").digest()
    assert change.base_hash == xxhash.xxh3_128(b"1.2.3\n").digest()
    manifest.put_many([change.entry])  # as journaled: the temp below gets another inode number
    _same_stat(tmp_path / "equal", b"1.2.4\n")
    os.replace(tmp_path / "equal", tree / "version.txt")
    result = scan(tree, manifest, PathFilter())
    assert result.out == []
    st = os.lstat(tree / "version.txt")
    assert result.stat_notes == [("version.txt", st.st_ino, st.st_ctime_ns)]


def test_a_file_deleted_and_back_under_its_old_inode_number_is_hashed(
    tree: Path, manifest: Manifest
) -> None:
    """`rm version.txt && mv staged version.txt` (ext4 gives a freed inode number out again): a
    delete of a name that is there again has what is there hashed, not judged by its stat.

    The rewrite below keeps the inode, size and mtime, as a reused inode number leaves them.
    """
    rec, target = _start(tree, manifest)
    ino = os.lstat(tree / "version.txt").st_ino
    _same_stat(tree / "version.txt", b"1.2.4\n")
    assert os.lstat(tree / "version.txt").st_ino == ino
    changes = settle(rec, target, [ev("delete", "version.txt"), ev("rescan", "version.txt")])
    assert [(c.op, c.path) for c in changes] == [("write", "version.txt")]
    assert_in_step(tree, manifest, target)


def test_rows_without_an_inode_number_are_not_hashed_their_number_is_learned(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """A target's rows (written by its receiver) and an older release's carry inode number 0:
    a restart's scan takes their stat as before, hashing nothing, and notes the number."""
    _start(tree, manifest)
    manifest.set_stat_notes([("version.txt", 0, 0)])
    _same_stat(tmp_path / "other", b"1.2.4\n")  # a hash would tell it from the manifest's
    os.replace(tmp_path / "other", tree / "version.txt")
    result = scan(tree, manifest, PathFilter())
    assert result.out == []
    st = os.lstat(tree / "version.txt")
    assert result.stat_notes == [("version.txt", st.st_ino, st.st_ctime_ns)]


def test_a_targets_start_up_scan_keeps_the_inode_number_it_found(
    tree: Path, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target's scan (no hard links followed) hashed a file under a new inode number (a
    restored or migrated tree) and did not keep the number: every start hashed it again."""
    _start(tree, manifest)
    _same_stat(tmp_path / "restored", b"1.2.3\n")  # the same file, copied back: a new inode
    os.replace(tmp_path / "restored", tree / "version.txt")
    hashed: list[str] = []
    real = scanner.hash_file

    def counting(at: str, *args: object, **kwargs: object) -> object:
        hashed.append(at)
        return real(at, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scanner, "hash_file", counting)
    target_scan = ChangeRecorder(tree, manifest, PathFilter(), hard_links=False)
    for _ in range(2):  # two starts
        assert target_scan.detect([ev("rescan", "")]).changes == []
    assert len(hashed) == 1, hashed  # the first start only
    assert manifest.get("version.txt").ino == os.lstat(tree / "version.txt").st_ino

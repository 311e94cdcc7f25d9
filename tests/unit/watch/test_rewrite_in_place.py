"""A file rewritten in place with its size, mtime and inode kept is found by a scan (its ctime).

Deploys do this while the agent is down or the watcher's queue overflows: `cp -p` or `rsync
--inplace -t` of a reproducible build (every mtime SOURCE_DATE_EPOCH) over the live tree. The
start-up, overflow and periodic rescans judged files by size, mtime, mode and inode number only,
so the new content was never replicated. The ctime the manifest keeps (bookkeeping, like the
inode number) tells them; its hash says whether the content changed.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio
import pytest
import xxhash
from tests.unit.watch._replay import WAIT_S, ModelTarget, assert_in_step, ev, settle

from relaysync.watch import scanner
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import SCHEMA_VERSION, Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import Watcher

EPOCH_NS = 1_600_000_000 * 10**9  # a reproducible build's fixed mtime


def _rewrite(path: Path, content: bytes) -> None:
    """Write `content` over `path` in place (same inode), then put its mtime back."""
    with open(path, "r+b") as f:
        f.write(content)
        f.truncate()
    os.utime(path, ns=(EPOCH_NS, EPOCH_NS))


def _start(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    (tree / "app.js").write_bytes(b"build=aaaa1111")
    os.utime(tree / "app.js", ns=(EPOCH_NS, EPOCH_NS))
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files a scan reads to hash."""
    seen: list[str] = []
    real = scanner.hash_file

    def counting(at: str, *args: object, **kwargs: object) -> object:
        seen.append(at)
        return real(at, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scanner, "hash_file", counting)
    return seen


def test_the_start_up_scan_finds_a_file_rewritten_in_place_with_its_stat_kept(
    tree: Path, manifest: Manifest
) -> None:
    _, target = _start(tree, manifest)
    before = os.lstat(tree / "app.js")
    _rewrite(tree / "app.js", b"build=bbbb2222")  # the agent is down
    after = os.lstat(tree / "app.js")
    assert (before.st_ino, before.st_size, before.st_mtime_ns) == (
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    )
    changes = settle(ChangeRecorder(tree, manifest, PathFilter()), target, [ev("rescan", "")])
    assert [(c.op, c.path) for c in changes] == [("write", "app.js")]
    assert changes[0].entry is not None
    assert changes[0].entry.hash == xxhash.xxh3_128(b"build=bbbb2222").digest()
    assert_in_step(tree, manifest, target)


@pytest.mark.anyio
async def test_a_rewrite_lost_in_an_overflow_is_found_by_its_rescan(
    tree: Path, manifest: Manifest
) -> None:
    """A real watcher whose queue overflows (nobody reads its batches while 20,000 events come):
    the rewrite's own events are lost, the rescan it sends instead must find it."""
    rec, target = _start(tree, manifest)
    for name in ("busy1", "busy2"):
        (tree / name).write_text("x")
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](0)
    async with anyio.create_task_group() as tg:
        await tg.start(Watcher(tree, PathFilter()).serve, send)
        for _ in range(10_000):  # more than the kernel queues (16,384); alternate, as it merges
            os.utime(tree / "busy1")  # an event with the one before if they are the same
            os.utime(tree / "busy2")
        _rewrite(tree / "app.js", b"build=bbbb2222")
        seen: list[FsEvent] = []
        with anyio.fail_after(WAIT_S * 3):
            while not any(e.kind == "rescan" and e.path == "" for e in seen):
                seen.extend(await receive.receive())
        tg.cancel_scope.cancel()
    changes = settle(rec, target, seen)
    assert ("write", "app.js") in [(c.op, c.path) for c in changes]
    assert_in_step(tree, manifest, target)


def test_a_rewrite_with_equal_content_is_hashed_once_and_records_nothing(
    tree: Path, manifest: Manifest, hashed: list[str]
) -> None:
    _start(tree, manifest)
    hashed.clear()
    _rewrite(tree / "app.js", b"build=aaaa1111")
    rec = ChangeRecorder(tree, manifest, PathFilter())
    for _ in range(2):  # two starts: the second one hashes nothing
        assert rec.detect_and_apply([ev("rescan", "")]) == []
    assert len(hashed) == 1, hashed
    assert manifest.get("app.js").ctime_ns == os.lstat(tree / "app.js").st_ctime_ns  # type: ignore[union-attr]


def test_a_chmod_while_down_is_an_attr_change_not_a_resend(tree: Path, manifest: Manifest) -> None:
    """chmod moves the ctime too: the scan hashes the file, finds the content equal and records
    the mode only, as it did before ctimes were kept."""
    _, target = _start(tree, manifest)
    os.chmod(tree / "app.js", 0o600)
    changes = settle(ChangeRecorder(tree, manifest, PathFilter()), target, [ev("rescan", "")])
    assert [(c.op, c.path) for c in changes] == [("attr", "app.js")]
    assert manifest.get("app.js").mode == 0o600  # type: ignore[union-attr]
    assert_in_step(tree, manifest, target)


def test_a_manifest_without_ctimes_fills_them_in_without_a_change_or_a_hash(
    tree: Path, tmp_path: Path, hashed: list[str]
) -> None:
    """Schema version 1 (ino, no ctime_ns) is migrated; its rows' ctime is unknown (0): the
    start-up scan takes their stat as before, hashing nothing, notes the ctime, and finds an
    in-place rewrite from then on."""
    db = tmp_path / "v1.db"
    fresh = Manifest(db)
    _start(tree, fresh)
    fresh.close()
    old = sqlite3.connect(db)  # as release 1 left it: no ctime_ns column
    old.executescript(
        "ALTER TABLE entries DROP COLUMN ctime_ns; PRAGMA user_version = 1;"  # noqa: ISC001
    )
    old.close()
    hashed.clear()
    manifest = Manifest(db)
    try:
        assert [e.ctime_ns for e in manifest.iter_entries()] == [0]
        rec = ChangeRecorder(tree, manifest, PathFilter())
        assert rec.detect_and_apply([ev("rescan", "")]) == []
        assert hashed == []
        assert manifest.get("app.js").ctime_ns == os.lstat(tree / "app.js").st_ctime_ns  # type: ignore[union-attr]
        _rewrite(tree / "app.js", b"build=bbbb2222")
        changes = rec.detect_and_apply([ev("rescan", "")])
        assert [(c.op, c.path) for c in changes] == [("write", "app.js")]
    finally:
        manifest.close()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_a_renamed_file_is_not_hashed_for_the_ctime_its_rename_gave_it(
    tree: Path, manifest: Manifest, hashed: list[str]
) -> None:
    """rename(2) moves the file's ctime: the recorder's look at a renamed file must not take
    that for a rewrite (a `mv` of a big file would read it all)."""
    rec, target = _start(tree, manifest)
    hashed.clear()
    os.rename(tree / "app.js", tree / "app.old.js")
    settle(rec, target, [ev("move", "app.js", "app.old.js")])
    assert hashed == []
    assert_in_step(tree, manifest, target)

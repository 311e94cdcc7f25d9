"""A source directory that is there but cannot be listed: the mapping goes on with the rest,
nothing below it is journaled (never a delete), and it is rescanned with backoff until it can be
listed, or at once on an attribute change of it (a chmod back), journaling what changed in it
meanwhile. The failure is injected here (real permissions: tests/unit/watch/test_scanner_unlistable.py
and tests/integration/test_unreadable_source_dir.py)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import anyio
import pytest

from relaysync._util.path_index import PathIndex
from relaysync.agent._unreadable_recheck import UnreadableRecheck
from relaysync.errors import SourceListError
from relaysync.watch import scanner
from relaysync.watch.watcher import FsEvent
from tests.unit.agent.test_source_unreadable import BOUND_S, _backdate, _mapping


class _Lock:
    """Makes the scanner's open of `d` (and of anything below it) fail with `code` while on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int = errno.EACCES) -> None:
        self.on = True
        real = scanner.open_dir_in

        def open_dir_in(top: Path, reldir: str) -> int:
            if self.on and (reldir == "d" or reldir.startswith("d/")):
                raise OSError(code, errno.errorcode[code], reldir)
            return real(top, reldir)

        monkeypatch.setattr(scanner, "open_dir_in", open_dir_in)


def test_an_unlistable_directory_is_rescanned_until_listable_and_its_changes_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the fix, `_record` raised PermissionError: the mapping stopped, and so did each
    restart's scan."""
    mapping, root = _mapping(tmp_path)
    (root / "d" / "sub").mkdir(parents=True)
    for rel in ("d/f", "d/sub/g", "a.txt"):
        (root / rel).write_text(f"first {rel}")
    _backdate(root / "d/f", root / "d/sub/g", root / "a.txt")
    anyio.run(mapping._record, [FsEvent(kind="rescan", path="")])
    first = mapping.journal.last_seq
    lock = _Lock(monkeypatch)
    (root / "d" / "f").write_text("changed while unlistable")
    (root / "d" / "sub" / "g").unlink()
    (root / "d" / "new").write_text("made while unlistable")
    (root / "b.txt").write_text("elsewhere")
    _backdate(root / "d/f", root / "d/new", root / "b.txt")
    caplog.set_level(logging.WARNING, logger="relaysync.agent._unreadable_recheck")

    def journaled() -> set[tuple[str, str]]:
        return {(r.op, r.path) for r in mapping.journal.read(first)}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping.unreadable.serve, mapping._record)
            await mapping._record(
                [FsEvent(kind="rescan", path=""), FsEvent(kind="write", path="d/f")]
            )
            assert journaled() == {("write", "b.txt")}  # the rest goes on; nothing of d
            assert "d" in mapping.unreadable
            assert "cannot list directory d in source" in caplog.text
            assert "read and enter it" in caplog.text
            lock.on = False
            with anyio.fail_after(BOUND_S):  # the re-check forgets d once its record returns
                while len(journaled()) < 4 or "d" in mapping.unreadable:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
    assert journaled() == {
        ("write", "b.txt"),
        ("write", "d/f"),
        ("write", "d/new"),
        ("delete", "d/sub/g"),
    }


def test_an_unlistable_root_stops_nothing_and_a_mass_delete_hold_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder itself unlistable (EIO): nothing journaled, and the rescan, which did not see
    the folder, does not end a mass-delete hold (before the fix: OSError out of `_record`)."""
    mapping, root = _mapping(tmp_path)
    (root / "a.txt").write_text("a")
    _backdate(root / "a.txt")
    anyio.run(mapping._record, [FsEvent(kind="rescan", path="")])
    first = mapping.journal.last_seq
    real = scanner.open_dir_in

    def open_dir_in(top: Path, reldir: str) -> int:
        if reldir == "":
            raise OSError(errno.EIO, "Input/output error", str(top))
        return real(top, reldir)

    monkeypatch.setattr(scanner, "open_dir_in", open_dir_in)
    (root / "a.txt").unlink()
    mapping._guard_held = True
    try:
        anyio.run(mapping._record, [FsEvent(kind="rescan", path="")])
        assert mapping.journal.last_seq == first
        assert "" in mapping.unreadable
        assert mapping._guard_held
    finally:
        mapping.close()


def test_a_chmod_of_an_unlistable_directory_or_above_rescans_it_at_once() -> None:
    recheck = UnreadableRecheck("/src", clock=lambda: 0.0)
    err = SourceListError.of("a/d", PermissionError(errno.EACCES, "Permission denied"))
    recheck.failed([err, err])  # many events of one directory: one entry
    assert recheck.rescans_for([FsEvent(kind="write", path="a/d/f")]) == []
    for changed in ("a/d", "a", ""):
        assert recheck.rescans_for([FsEvent(kind="attr", path=changed)]) == [
            FsEvent(kind="rescan", path="a/d", is_dir=True)
        ]
    assert recheck.rescans_for([FsEvent(kind="attr", path="a/dd")]) == []


class _Counted(str):
    """A path that counts the prefix tests made of it (the work of a lookup, not its time)."""

    calls = 0

    def startswith(self, *args: object) -> bool:  # type: ignore[override]
        _Counted.calls += 1
        return super().startswith(*args)  # type: ignore[arg-type]


def test_an_attrib_burst_does_not_test_every_unlistable_directory_per_event() -> None:
    """Before the fix, rescans_for tested each unlistable directory against each ATTRIB event
    of the batch: 1,000 x 5,000 on the event loop (0.6 CPU-s), quadratic under `chmod -R`."""
    recheck = UnreadableRecheck("/src", clock=lambda: 0.0)
    dirs = [_Counted(f"locked/d{i:03d}") for i in range(200)]
    recheck.failed(
        [SourceListError.of(d, PermissionError(errno.EACCES, "Permission denied")) for d in dirs]
    )
    events = [FsEvent(kind="attr", path=f"other/f{i}") for i in range(500)]
    events.append(FsEvent(kind="attr", path="locked/d007"))
    _Counted.calls = 0
    assert recheck.rescans_for(events) == [FsEvent(kind="rescan", path="locked/d007", is_dir=True)]
    assert _Counted.calls <= 2 * len(events)  # before: 200 x 501 = 100,200
    assert len(recheck.rescans_for([FsEvent(kind="attr", path="locked")])) == 200


def test_a_path_index_finds_what_is_at_or_below_a_path() -> None:
    index = PathIndex()
    for p in ("a", "a/b", "a/b/c", "ab", "a.b", "b"):
        index.add(p)
    assert index.at_or_below("a") == ["a", "a/b", "a/b/c"]
    assert index.at_or_below("a/b") == ["a/b", "a/b/c"]
    assert index.at_or_below("") == ["a", "a.b", "a/b", "a/b/c", "ab", "b"]
    index.discard("a/b")
    assert index.at_or_below("a") == ["a", "a/b/c"] and "a/b" not in index and len(index) == 5

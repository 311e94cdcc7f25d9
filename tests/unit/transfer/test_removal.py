"""What a target reports a delete, rename or erase removed: the path's kind and the files and
links under it, bounded, whatever the job log knows (the purger purges them)."""

from __future__ import annotations

import os
from pathlib import Path

from relaysync.protocol.messages import Checkpoint, CommitRecord, Delete, Erase, Rename, Symlink
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import TargetFolder

TREE = ("d/a.html", "d/sub/b.html", "d/sub/deeper/c.css", "keep.txt")


def _fill(root: Path) -> None:
    for rel in TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    os.symlink("a.html", root / "d" / "link.html")
    (root / "d" / ".relaysync.x.tmp").write_text("a temp file is never served")


def _apply(folder: TargetFolder, *ops: object) -> list[CommitRecord]:
    reports: list[CommitRecord] = []
    session = ReceiverSession(folder, "j1", lambda _wm, recs: reports.extend(recs))
    session.apply_batch([*ops, Checkpoint(seq=len(ops))])  # type: ignore[list-item]
    return reports


def test_a_directory_delete_reports_every_file_and_link_under_it(folder: TargetFolder) -> None:
    _fill(folder.root)
    (record,) = _apply(folder, Delete(seq=1, path="d"))
    assert (record.kind, record.removed_truncated) == ("d", False)
    assert sorted(record.removed) == [
        "d/a.html",
        "d/link.html",
        "d/sub/b.html",
        "d/sub/deeper/c.css",
    ]
    assert not (folder.root / "d").exists()


def test_a_file_or_link_delete_names_no_paths_under_it(folder: TargetFolder) -> None:
    _fill(folder.root)
    file, link, gone = _apply(
        folder,
        Delete(seq=1, path="keep.txt"),
        Delete(seq=2, path="d/link.html"),
        Delete(seq=3, path="nothing/here"),
    )
    assert [(r.kind, r.removed) for r in (file, link)] == [("f", ()), ("l", ())]
    assert (gone.ok, gone.kind, gone.removed) == (True, "", ())  # unknown: the master bans


def test_a_directory_rename_reports_the_old_paths_of_what_moved(folder: TargetFolder) -> None:
    _fill(folder.root)
    (record,) = _apply(folder, Rename(seq=1, path="d/sub", new_path="e"))
    assert (record.kind, record.new_path) == ("d", "e")
    assert sorted(record.removed) == ["d/sub/b.html", "d/sub/deeper/c.css"]
    assert (folder.root / "e" / "deeper" / "c.css").is_file()


def test_an_erase_reports_what_it_removed_and_nothing_it_kept(folder: TargetFolder) -> None:
    _fill(folder.root)
    (record,) = _apply(folder, Erase(seq=0, path="", keep=("keep.txt",)))
    assert record.kind == "d"
    assert sorted(record.removed) == [
        "d/a.html",
        "d/link.html",
        "d/sub/b.html",
        "d/sub/deeper/c.css",
    ]
    assert (folder.root / "keep.txt").is_file()


def test_the_list_is_cut_at_its_bounds_and_says_so(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / "d" / f"s{i}").mkdir(parents=True)
        (tmp_path / "d" / f"s{i}" / "f.html").write_text("x")
    parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        by_count = RemovalSurvey(max_paths=4)
        assert by_count.tree(parent, "d", "d") == "d"
        assert (len(by_count.paths), by_count.truncated) == (4, True)
        by_bytes = RemovalSurvey(max_bytes=len("d/s0/f.html") * 3)
        by_bytes.tree(parent, "d", "d")
        assert (len(by_bytes.paths), by_bytes.truncated) == (3, True)
        whole = RemovalSurvey()
        whole.tree(parent, "d", "d")
        assert (len(whole.paths), whole.truncated) == (10, False)
    finally:
        os.close(parent)


def _releases(root: Path) -> None:
    """An atomic deploy's tree: releases/5 and releases/6, `current` -> releases/5."""
    for release, names in (("5", ("app.css", "old.js")), ("6", ("app.css", "new.js"))):
        (root / "releases" / release).mkdir(parents=True)
        for name in names:
            (root / "releases" / release / name).write_text(release)
    os.symlink("releases/5", root / "current")


def test_a_switched_link_to_a_directory_reports_what_is_under_its_old_and_new_target(
    folder: TargetFolder,
) -> None:
    """The atomic deploy: `current` -> releases/5 becomes -> releases/6. Every /current/ URL
    changes; the purger was told only of `current` itself."""
    _releases(folder.root)
    (record,) = _apply(folder, Symlink(seq=1, path="current", target="releases/6"))
    assert record.kind == "d"  # to the web server, a directory changed
    assert sorted(record.removed) == ["current/app.css", "current/new.js", "current/old.js"]
    assert os.readlink(folder.root / "current") == "releases/6"


def test_a_new_link_to_a_file_is_a_link(folder: TargetFolder) -> None:
    _fill(folder.root)
    (record,) = _apply(folder, Symlink(seq=1, path="alias.html", target="d/a.html"))
    assert (record.kind, record.removed) == ("l", ())


def test_a_deleted_link_to_a_directory_reports_what_was_under_it(folder: TargetFolder) -> None:
    _releases(folder.root)
    (record,) = _apply(folder, Delete(seq=1, path="current"))
    assert (record.kind, sorted(record.removed)) == ("d", ["current/app.css", "current/old.js"])
    assert (folder.root / "releases" / "5" / "app.css").is_file()  # the target stays


def test_a_link_renamed_over_another_reports_both_trees(folder: TargetFolder) -> None:
    """`ln -s releases/6 current.tmp && mv -T current.tmp current`: what the new name showed
    before (releases/5's old.js) goes too."""
    _releases(folder.root)
    os.symlink("releases/6", folder.root / "current.tmp")
    (record,) = _apply(folder, Rename(seq=1, path="current.tmp", new_path="current"))
    assert record.kind == "d"
    assert sorted(record.removed) == [
        "current.tmp/app.css",
        "current.tmp/new.js",
        "current/app.css",
        "current/old.js",
    ]

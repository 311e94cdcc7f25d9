"""The files a link keeps to read again (transfer/unreadable.py): renames, and the link's
reports of them (counted, not timed)."""

from __future__ import annotations

import logging

from relaysync.transfer import ops
from relaysync.transfer.unreadable import UnreadableFiles


NOW = [0.0]  # the link's clock: moved past every wait before `due`


def _files() -> UnreadableFiles:
    NOW[0] = 0.0
    return UnreadableFiles(lambda: NOW[0], logging.getLogger("test"), ops.SendOptions())


def test_a_rename_rekeys_what_it_moves_under_its_seq() -> None:
    files = _files()
    files.failed("p", 3, b"h", 0.0)
    files.failed("d/a", 4, b"h", 0.0)
    files.failed("d/sub/b", 9, b"h", 0.0)
    files.failed("dx", 5, b"h", 0.0)  # not below d
    files.failed("e/old", 2, b"h", 0.0)  # replaced by the rename of d onto e
    files.moved("p", "q", 7)
    files.moved("d", "e", 8)
    NOW[0] = 10_000.0
    assert sorted((f.path, f.seq) for f in files.due(100)) == [
        ("dx", 5),
        ("e/a", 8),
        ("e/sub/b", 9),  # a newer seq than the rename's stays
        ("q", 7),
    ]
    files.forget("e")
    assert sorted(f.path for f in files.due(100)) == ["dx", "q"]

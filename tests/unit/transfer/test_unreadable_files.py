"""The files a link keeps to read again (transfer/unreadable.py): renames, and the link's
reports of them (counted, not timed)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from relaysync.errors import SourceReadError
from relaysync.protocol.messages import Checkpoint, FileAbort
from relaysync.transfer import ops
from relaysync.transfer.unreadable import WARN_FILES, UnreadableFiles

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


def _failing(path: str, code: int, *, after: int = 0) -> Iterator[ops.Outgoing]:
    """A file's messages: `after` of them go, then reading it fails with `code`."""
    for i in range(after):
        yield Checkpoint(seq=i)  # stands for a chunk of the file
    raise SourceReadError.of(path, OSError(code, os.strerror(code)))


def _read_all(files: UnreadableFiles, paths: list[str], code: int) -> list[ops.Outgoing]:
    out: list[ops.Outgoing] = []
    for path in paths:
        out.extend(files.read(1, path, (b"h", 0.0), _failing(path, code)))
    files.flush_warnings()
    return out


def test_a_failure_is_reported_once_until_it_changes_and_warnings_are_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before the fix: a warning and a FileAbort (a failed job-log record) per file per retry
    cycle, with no cap: 10^6 unreadable files made 10^6 of each a minute."""
    files = _files()
    paths = [f"f{i}" for i in range(100)]
    with caplog.at_level(logging.WARNING, logger="test"):
        first = _read_all(files, paths, errno.EACCES)
        assert [m.path for m in first if isinstance(m, FileAbort)] == paths  # each once
        assert len(caplog.records) == WARN_FILES + 1  # 20 named, one line counts 80 more
        assert "80 more" in caplog.records[-1].getMessage()
        caplog.clear()
        assert _read_all(files, paths, errno.EACCES) == []  # the same failure again: silent
        assert caplog.records == []
        again = _read_all(files, paths[:3], errno.EIO)  # another errno: reported again
        assert [m.path for m in again if isinstance(m, FileAbort)] == paths[:3]
        assert len(caplog.records) == 3
    # a retry that sent part of the file before it failed still ends it with a FileAbort
    partial = list(files.read(1, "f5", (b"h", 0.0), _failing("f5", errno.EACCES, after=2)))
    assert isinstance(partial[-1], FileAbort) and len(partial) == 3


def test_a_retry_of_a_compared_file_that_fails_again_sends_nothing_of_seq_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file first found unreadable by a comparison is kept under seq 0. Before the fix each
    retry sent FileAbort(seq=0), which resets a relay's spool (spool.py: catch-up work): every
    child session restarted and compared again once a minute while the file stayed unreadable."""
    files = _files()
    first = list(files.read(0, "p", (b"h", 0.0), _failing("p", errno.EACCES)))
    assert [type(m) for m in first] == [FileAbort]
    monkeypatch.setattr(
        ops, "iter_file_messages", lambda root, path, *a, **k: _failing(path, errno.EACCES)
    )
    NOW[0] = 10_000.0
    source = SimpleNamespace(root=None)
    assert list(files.retries(source, SimpleNamespace(sent_upto=5))) == [
        Checkpoint(seq=5, again=True),
        Checkpoint(seq=5),
    ]
    assert "p" in files  # still kept, read again later

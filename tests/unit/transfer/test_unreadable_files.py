"""The files a link keeps to read again (transfer/unreadable.py): renames, and the link's
reports of them (counted, not timed)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import xxhash

from relaysync.constants import UNSETTLED_READS
from relaysync.errors import SourceReadError
from relaysync.protocol.messages import Checkpoint, FileAbort, FileStart, SmallFile
from relaysync.transfer import ops
from relaysync.transfer.moves import MovedAway
from relaysync.transfer.unreadable import WARN_FILES, UnreadableFiles

NOW = [0.0]  # the link's clock: moved past every wait before `due`


def _files(*, small_files: bool = False) -> UnreadableFiles:
    NOW[0] = 0.0
    options = ops.SendOptions(small_files=small_files)
    return UnreadableFiles(lambda: NOW[0], logging.getLogger("test"), options)


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
    session = SimpleNamespace(sent_upto=5, moved=MovedAway())
    assert list(files.retries(source, session)) == [
        Checkpoint(seq=5, again=True),
        Checkpoint(seq=5),
    ]
    assert "p" in files  # still kept, read again later


def _retry_round(files: UnreadableFiles, root: Path, moved: MovedAway) -> list[ops.Outgoing]:
    """One round of the retries due (the clock moved past every wait), without its Checkpoints."""
    NOW[0] += 10_000.0
    session = SimpleNamespace(sent_upto=100, moved=moved)
    out = list(files.retries(SimpleNamespace(root=root), session))
    return [m for m in out if not isinstance(m, Checkpoint | ops.Flush)]


def _send(files: UnreadableFiles, root: Path, seq: int, path: str) -> bool | None:
    """A record's read of `path` as journaled now (the journaled hash: what is there now)."""
    data = (root / path).read_bytes()
    opts = ops.SendOptions(small_files=True)
    digest = xxhash.xxh3_128_digest(data)
    messages = ops.iter_file_messages(root, path, seq, expected_hash=digest, options=opts)
    gen = files.read(seq, path, (digest, 0.0), messages)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def test_a_retry_that_finds_the_file_gone_has_its_rename_send_it_whole(tmp_path: Path) -> None:
    """The file kept to read again was renamed before its retry came due. Before the fix the
    retry dropped it unnoted, and the rename's record then moved the target's old version to
    the new name (/tmp/rev-send/repro_retry_then_rename.py)."""
    files = _files(small_files=True)
    files.failed("page.html", 2, b"h", 0.0)
    moved = MovedAway()
    assert _retry_round(files, tmp_path, moved) == []  # gone: nothing to send
    assert "page.html" not in files
    assert moved.follow("page.html", "renamed.html") == ["renamed.html"]


def test_a_file_read_that_is_not_the_version_journaled_is_kept_and_read_again(
    tmp_path: Path,
) -> None:
    """Caught half rewritten (a consistent snapshot of 400 of 1000 bytes): before the fix it
    went as the journaled version, and the target kept it."""
    files = _files(small_files=True)
    page = tmp_path / "page.html"
    page.write_bytes(b"B" * 1000)
    journaled = xxhash.xxh3_128_digest(page.read_bytes())
    page.write_bytes(b"B" * 400)
    opts = ops.SendOptions(small_files=True)
    messages = ops.iter_file_messages(tmp_path, "page.html", 2, options=opts)
    assert list(files.read(2, "page.html", (journaled, 0.0), messages)) == []  # none goes
    assert files.unsettled("page.html")
    moved = MovedAway()
    files.note(moved, tmp_path, "page.html", None)
    assert "page.html" in moved  # a rename of it sends it whole
    assert _retry_round(files, tmp_path, moved) == []  # still torn: kept
    page.write_bytes(b"B" * 1000)
    [sent] = _retry_round(files, tmp_path, moved)
    assert isinstance(sent, SmallFile) and sent.seq == 2 and sent.hash == journaled
    assert "page.html" not in files and "page.html" not in moved


def test_a_large_file_read_as_another_version_ends_in_a_file_abort(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 300_000)
    files = _files(small_files=True)
    messages = ops.iter_file_messages(tmp_path, "big", 7, expected_hash=b"h" * 16)
    out = list(files.read(7, "big", (b"h" * 16, 0.0), messages))
    assert isinstance(out[0], FileStart) and out[-1] == FileAbort(
        seq=7, reason="not the version journaled"
    )
    assert files.unsettled("big")


def test_a_later_send_of_the_path_ends_the_rereads(tmp_path: Path) -> None:
    files = _files(small_files=True)
    (tmp_path / "app.log").write_text("the new log")
    list(files.read(2, "app.log", (b"h" * 16, 0.0), ops.iter_file_messages(tmp_path, "app.log", 2)))
    assert files.unsettled("app.log")
    assert _send(files, tmp_path, 4, "app.log") is True  # the write of the new log
    assert "app.log" not in files


def test_a_file_that_never_settles_goes_as_it_is_then_is_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _files(small_files=True)
    (tmp_path / "f").write_text("not the journaled version")
    messages = ops.iter_file_messages(tmp_path, "f", 3, options=ops.SendOptions(small_files=True))
    list(files.read(3, "f", (b"h" * 16, 0.0), messages))
    moved = MovedAway()
    for _ in range(UNSETTLED_READS - 1):
        assert _retry_round(files, tmp_path, moved) == []
    with caplog.at_level(logging.WARNING, logger="test"):
        [sent] = _retry_round(files, tmp_path, moved)  # the last read: as it is
    assert isinstance(sent, SmallFile) and sent.data == b"not the journaled version"
    assert "sent as it is" in caplog.text and "f" not in files
    # one that changes at every read too is given up, with an error
    list(files.read(3, "f", (b"h" * 16, 0.0), iter([FileAbort(seq=3, reason="changed")])))
    for _ in range(UNSETTLED_READS - 1):
        _retry_round(files, tmp_path, moved)
    with caplog.at_level(logging.ERROR, logger="test"):
        list(files.read(3, "f", (b"", 0.0), iter([FileAbort(seq=3, reason="changed")])))
    assert "gave up" in caplog.text and "f" not in files


def test_a_file_written_all_the_time_still_goes_now_and_then(tmp_path: Path) -> None:
    """Each record's read finds a version newer than journaled (a busy log): the count of reads
    goes on across its seqs, so one goes as it is, not only once the writer pauses."""
    files = _files(small_files=True)
    log = tmp_path / "busy.log"
    opts = ops.SendOptions(small_files=True)
    for seq in range(1, UNSETTLED_READS + 1):
        log.write_text(f"{seq} lines")
        messages = ops.iter_file_messages(tmp_path, "busy.log", seq, options=opts)
        assert list(files.read(seq, "busy.log", (b"h" * 16, 0.0), messages)) == []
    messages = ops.iter_file_messages(tmp_path, "busy.log", 9, options=opts)
    [sent] = list(files.read(9, "busy.log", (b"h" * 16, 0.0), messages))
    assert isinstance(sent, SmallFile) and sent.data == f"{UNSETTLED_READS} lines".encode()
    assert "busy.log" not in files


def test_a_comparison_defers_only_a_kept_record_of_the_version_it_would_send() -> None:
    """`defer`: a path kept under a record's seq, for the version the comparison would send (or
    any version), is left to its retry, made due at once; one kept by a comparison (seq 0), one
    kept for another version, and one not kept are sent by the comparison."""
    files = _files()
    list(files.read(7, "rec", (b"h", 0.0), _failing("rec", errno.EIO)))
    list(files.read(8, "any", (b"", 0.0), _failing("any", errno.EIO)))
    list(files.read(0, "cmp", (b"h", 0.0), _failing("cmp", errno.EIO)))
    assert files.due(100) == []  # each waits UNREADABLE_RETRY_MIN_S first
    assert files.defer("rec", b"h") and files.defer("any", b"h")
    assert not files.defer("rec2", b"h")  # not kept
    assert not files.defer("cmp", b"h")  # kept by a comparison: seq 0 either way
    list(files.read(9, "other", (b"old", 0.0), _failing("other", errno.EIO)))
    assert not files.defer("other", b"new")  # the comparison sends a newer version
    assert [(f.path, f.seq) for f in files.due(100)] == [("rec", 7), ("any", 8)]

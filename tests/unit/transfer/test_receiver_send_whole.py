"""A target that lacks the version a change builds on (transfer/_tree_ops.py, receiver.py): a
Rename of another version than it holds is refused for the source to send the new path whole,
and a batch refused at such a change keeps what it applied before it
(/work/notes/s25/send-review.md, defects 1 and 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import (
    Ack,
    Checkpoint,
    CommitRecord,
    Error,
    ErrorCode,
    Rename,
    SmallFile,
)
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from tests.unit.transfer._target_helpers import delta_messages, small_file


def _session(folder: TargetFolder, *, resends: bool = True) -> ReceiverSession:
    session = ReceiverSession(folder, "j1", lambda *_: None)
    session.sender_resends_renames = resends
    session.keeps_applied_before_refusal = True
    return session


def _h(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def test_a_rename_of_another_version_than_the_one_held_is_refused_for_a_whole_send(
    folder: TargetFolder,
) -> None:
    """The source read the new log for the old log's last write (rotated meanwhile): app.log
    here is the new log, and the Rename names the old log's version. Before the fix it was moved
    to app.log.1, which then held the new log for good."""
    s = _session(folder)
    assert s.apply_batch([small_file(1, "app.log", b"new log\n"), Checkpoint(seq=1)])
    rename = Rename(seq=2, path="app.log", new_path="app.log.1", hash=_h(b"line 1\nline 2\n"))
    [reply] = s.apply_batch([rename, Checkpoint(seq=2)])
    assert isinstance(reply, Error) and reply.code == ErrorCode.BASE_MISMATCH
    assert reply.seq == 2 and "app.log.1 whole" in reply.detail
    assert (folder.root / "app.log").read_bytes() == b"new log\n"
    assert not (folder.root / "app.log.1").exists()
    assert folder.watermark("j1") == 1


@pytest.mark.parametrize("resends", [True, False], ids=["this release", "older sender"])
def test_a_rename_of_the_version_held_is_applied(folder: TargetFolder, resends: bool) -> None:
    s = _session(folder, resends=resends)
    s.apply_batch([small_file(1, "a", b"v1"), Checkpoint(seq=1)])
    held = _h(b"v1") if resends else _h(b"another")  # an older sender cannot resend: applied
    replies = s.apply_batch([Rename(seq=2, path="a", new_path="b", hash=held), Checkpoint(seq=2)])
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert (folder.root / "b").read_bytes() == b"v1" and not (folder.root / "a").exists()


@pytest.mark.parametrize("relay", [False, True], ids=["target", "relay"])
def test_a_batch_refused_at_a_delta_keeps_what_it_applied_before(
    tmp_path: Path, folder: TargetFolder, relay: bool
) -> None:
    """Before the fix the whole batch went, and the next session sent it again from its start:
    K files lacking their base in one batch cost K resends of it. A relay keeps whole batches
    only (its spool restarts at its watermark)."""
    reports: list[CommitRecord] = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.extend(recs))
    s.keeps_applied_before_refusal = not relay
    old = os.urandom(256 * 1024)
    delta = delta_messages(tmp_path, old, old[:1000] + b"edited" + old[1006:])  # seq 3, of u/f
    (folder.root / "u").mkdir()
    (folder.root / "u" / "f").write_bytes(b"not its base")
    after: SmallFile = small_file(4, "c", b"after")
    batch = [small_file(1, "a", b"a"), small_file(2, "b", b"b"), *delta, after, Checkpoint(seq=4)]
    [reply] = s.apply_batch(batch)
    assert isinstance(reply, Error) and reply.code == ErrorCode.BASE_MISMATCH and reply.seq == 3
    assert not (folder.root / "c").exists()
    if relay:
        assert folder.watermark("j1") == 0 and not (folder.root / "a").exists() and not reports
    else:
        assert folder.watermark("j1") == 2
        assert (folder.root / "a").read_bytes() == b"a" and (folder.root / "b").read_bytes() == b"b"
        assert [r.seq for r in reports] == [1, 2]

"""What a link tells its target of the source's unreadable paths (relay_unreadable.py), what a
relay keeps of it, and a relay forwarding a file the source sent again (relay_retried.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from relaysync.protocol.messages import (
    MAX_UNREADABLE_PATHS,
    AnyMessage,
    Checkpoint,
    SmallFile,
    SourceUnreadable,
)
from relaysync.transfer import ops
from relaysync.transfer.compare import Unreadable
from relaysync.transfer.relay import RefusedDelta, RelayLink
from relaysync.transfer.relay_resume import ResumeCut
from relaysync.transfer.relay_retried import StreamHead
from relaysync.transfer.relay_unreadable import KeptUnreadable, UnreadableTeller, to_wire

H = b"h" * 16
AB = Unreadable(files=frozenset({"a", "b"}))
A = Unreadable(files=frozenset({"a"}))


def test_the_first_word_of_a_session_goes_even_empty_and_replaces_once_caught_up() -> None:
    assert UnreadableTeller().to_tell(Unreadable(), at=5, sent_upto=5) == SourceUnreadable()
    behind = UnreadableTeller().to_tell(Unreadable(), at=5, sent_upto=4)
    assert behind == SourceUnreadable(replace=False)  # a relay waits for it before comparing


def test_a_shrink_waits_until_the_records_before_it_were_sent() -> None:
    """A path readable again: the record that brings it goes first, or a relay's comparison
    would erase it on a child before its tree holds it."""
    teller = UnreadableTeller()
    assert teller.to_tell(AB, at=5, sent_upto=5) == SourceUnreadable(files=("a", "b"))
    assert teller.to_tell(AB, at=5, sent_upto=5) is None  # nothing new
    assert teller.to_tell(A, at=7, sent_upto=5) is None  # b readable, its record not sent yet
    grown = Unreadable(files=frozenset({"a", "c"}))
    assert teller.to_tell(grown, at=8, sent_upto=5) == SourceUnreadable(
        files=("a", "c"), replace=False
    )  # an addition goes at once
    assert teller.to_tell(grown, at=8, sent_upto=8) == SourceUnreadable(files=("a", "c"))


def test_a_set_over_the_bounds_goes_cut_and_marked_incomplete() -> None:
    many = Unreadable(files=frozenset(f"f{i}" for i in range(MAX_UNREADABLE_PATHS + 1)))
    message = to_wire(many, replace=True)
    assert len(message.files) == MAX_UNREADABLE_PATHS and not message.complete
    message.validate()
    assert to_wire(A, replace=True).complete


def test_a_relay_keeps_what_it_was_told_on_disk(tmp_path: Path) -> None:
    kept = KeptUnreadable(tmp_path)
    kept.learn(SourceUnreadable(files=("a",), dirs=("d",)))
    kept.learn(SourceUnreadable(files=("b",), replace=False))
    assert KeptUnreadable(tmp_path).now == Unreadable(
        files=frozenset({"a", "b"}), dirs=frozenset({"d"})
    )
    kept.learn(SourceUnreadable(dirs=("d",)))
    assert KeptUnreadable(tmp_path).now == Unreadable(dirs=frozenset({"d"}))
    (tmp_path / "unreadable.json").write_text("{not json")
    assert not KeptUnreadable(tmp_path).now.complete  # unknown: the relay erases nothing


def _small(seq: int, path: str) -> SmallFile:
    return SmallFile(seq=seq, path=path, size=1, mode=0o644, mtime_ns=1, data=b"x", hash=H)


def _forwarded(child_at: int, reads: list[list[AnyMessage]], base: int) -> list[str]:
    """What a child sent up to `child_at` gets of these spool reads (from a spool at `base`)."""
    link: Any = object.__new__(RelayLink)  # only _forward's collaborators are needed
    link.options = ops.SendOptions()
    session = type("S", (), {"sent_upto": child_at})()
    got: list[str] = []

    async def send(_session: object, out: list[AnyMessage]) -> None:
        for m in out:
            got.append(f"{type(m).__name__}:{m.seq}")  # type: ignore[union-attr]
            if isinstance(m, Checkpoint):
                session.sent_upto = max(session.sent_upto, m.seq)

    link._send = send

    async def forward_all() -> None:
        head, refused, cut = StreamHead(base), RefusedDelta(), ResumeCut()
        for messages in reads:
            await link._forward(session, messages, refused, cut, head)

    anyio.run(forward_all)
    return got


NEW = [_small(5, "n"), _small(6, "m"), Checkpoint(seq=6)]
# The source read it again at seq 3 (transfer/unreadable.py `retries`).
RETRIED = [Checkpoint(seq=6, again=True), _small(3, "late"), Checkpoint(seq=6)]


def test_a_file_the_source_sent_again_is_forwarded_to_a_child_at_that_point() -> None:
    """Before the fix its seq (3, below the child's watermark) had it skipped."""
    assert _forwarded(4, [NEW, RETRIED], base=4) == [
        "SmallFile:5",
        "SmallFile:6",
        "Checkpoint:6",
        "Checkpoint:6",
        "SmallFile:3",
        "Checkpoint:6",
    ]
    assert _forwarded(4, [NEW + RETRIED], base=4)[-2:] == ["SmallFile:3", "Checkpoint:6"]
    # A child at that point already (a new session of it reads the spool from its start).
    assert _forwarded(6, [NEW, RETRIED], base=4) == ["Checkpoint:6", "SmallFile:3", "Checkpoint:6"]


def test_a_child_past_the_retry_does_not_get_it_again() -> None:
    """It was sent it then, or got a later version: an old copy must not overwrite that."""
    later = [_small(7, "late"), Checkpoint(seq=7)]
    assert _forwarded(7, [NEW, RETRIED, later], base=4) == []


def test_a_replay_of_what_the_child_has_is_not_forwarded_again() -> None:
    """Our parent replays what we spooled but did not commit (we refused the batch): it follows
    a Checkpoint past it, unmarked. Before the fix it was taken for files the source sent again."""
    replay = [_small(5, "n"), _small(6, "m"), Checkpoint(seq=6)]
    assert _forwarded(6, [NEW, replay], base=4) == []
    assert _forwarded(4, [NEW, replay], base=4) == ["SmallFile:5", "SmallFile:6", "Checkpoint:6"]


def test_a_shrink_is_told_once_the_head_at_the_shrink_was_sent_though_the_head_moves() -> None:
    """A busy source: a record more is journaled at every turn. Before the fix the replacement
    waited for the link to reach the moving head: never, while the source kept writing."""
    teller = UnreadableTeller()
    assert teller.to_tell(AB, at=10, sent_upto=10) is not None
    assert teller.to_tell(A, at=11, sent_upto=10) is None  # b left at 11: its record not sent
    grown = Unreadable(files=frozenset({"a", "c"}))
    # b's record went (11), but c left meanwhile (journaled at 12, not sent): c is kept too.
    assert teller.to_tell(grown, at=12, sent_upto=11) == SourceUnreadable(files=("a", "c"))
    assert teller.to_tell(A, at=13, sent_upto=12) is None
    assert teller.to_tell(A, at=14, sent_upto=13) == SourceUnreadable(files=("a",))
    assert teller.to_tell(A, at=15, sent_upto=14) is None


def test_a_first_word_told_as_an_addition_is_replaced_once_its_head_was_sent() -> None:
    teller = UnreadableTeller()
    assert teller.to_tell(A, at=10, sent_upto=5) == SourceUnreadable(files=("a",), replace=False)
    assert teller.to_tell(A, at=20, sent_upto=10) == SourceUnreadable(files=("a",))


def test_additions_past_the_bounds_leave_the_kept_set_cut_and_incomplete(tmp_path: Path) -> None:
    """Before the fix every addition was kept: 40 of them, 163,840 paths (2.5 MB rewritten at
    each message), and a parent could grow it without end."""
    kept = KeptUnreadable(tmp_path)
    for batch in range(3):
        files = tuple(f"tmp/{batch}/{i:05}" for i in range(MAX_UNREADABLE_PATHS))
        kept.learn(SourceUnreadable(files=files, replace=False))
    assert len(kept.now.files) == MAX_UNREADABLE_PATHS and not kept.now.complete
    assert KeptUnreadable(tmp_path).now == kept.now
    kept.learn(SourceUnreadable(files=("a",)))  # the parent's next replacement
    assert kept.now == A


def test_an_incomplete_set_says_that_the_relay_erases_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the fix nothing said so: files only the children have stayed there for good."""
    kept = KeptUnreadable(tmp_path)
    with caplog.at_level(logging.INFO, logger="relaysync.transfer.relay_unreadable"):
        kept.learn(SourceUnreadable(files=("a",), complete=False))
        KeptUnreadable(tmp_path)  # loaded that way after a restart: said again
        kept.learn(SourceUnreadable(files=("a",)))
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    erase_nothing = [m for level, m in said if level == "WARNING" and "erase nothing" in m]
    assert len(erase_nothing) == 2, said
    assert any(level == "INFO" and "all known again" in m for level, m in said), said


def test_a_source_says_once_that_it_tells_a_cut_set(caplog: pytest.LogCaptureFixture) -> None:
    many = Unreadable(files=frozenset(f"f{i}" for i in range(MAX_UNREADABLE_PATHS + 1)))
    teller = UnreadableTeller()
    with caplog.at_level(logging.WARNING, logger="relaysync.transfer.relay_unreadable"):
        assert not teller.to_tell(many, at=1, sent_upto=1).complete  # type: ignore[union-attr]
        teller.to_tell(Unreadable(files=many.files | {"x"}), at=2, sent_upto=2)
    assert [r.getMessage() for r in caplog.records if "erase nothing" in r.getMessage()]
    assert len(caplog.records) == 1


def test_a_failed_save_leaves_no_older_word_on_disk(tmp_path: Path) -> None:
    """An older file read after a restart keeps too little: what the source could not read
    since would be erased on a child. Unknown instead: the relay erases nothing until told."""
    kept = KeptUnreadable(tmp_path, streamed=True)
    kept.learn(SourceUnreadable(files=("a",)))
    (tmp_path / "unreadable.tmp").mkdir()  # the save fails (ENOSPC, EIO ...)
    kept.learn(SourceUnreadable(files=("a", "b")))
    assert kept.now == AB  # in memory: right
    assert not (tmp_path / "unreadable.json").exists()
    assert not KeptUnreadable(tmp_path, streamed=True).now.complete
    assert KeptUnreadable(tmp_path).now == Unreadable()  # a new relay: nothing told, none missing
    (tmp_path / "unreadable.tmp").rmdir()
    kept.learn(SourceUnreadable(files=("a", "b")))  # the same word again: saved this time
    assert KeptUnreadable(tmp_path, streamed=True).now == AB


def test_a_relay_under_an_older_parent_keeps_nothing(tmp_path: Path) -> None:
    kept = KeptUnreadable(tmp_path, streamed=True)
    kept.learn(SourceUnreadable(files=("gone.txt",), complete=False))
    kept.forget()
    assert kept.now == Unreadable()
    assert KeptUnreadable(tmp_path, streamed=True).now == Unreadable()

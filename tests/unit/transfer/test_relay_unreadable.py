"""What a link tells its target of the source's unreadable paths (relay_unreadable.py), what a
relay keeps of it, and a relay forwarding a file the source sent again (relay_retried.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

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
RETRIED = [_small(3, "late"), Checkpoint(seq=6)]  # the source read it again at seq 3


def test_a_file_the_source_sent_again_is_forwarded_to_a_child_at_that_point() -> None:
    """Before the fix its seq (3, below the child's watermark) had it skipped."""
    assert _forwarded(4, [NEW, RETRIED], base=4) == [
        "SmallFile:5",
        "SmallFile:6",
        "Checkpoint:6",
        "SmallFile:3",
        "Checkpoint:6",
    ]
    assert _forwarded(4, [NEW + RETRIED], base=4)[-2:] == ["SmallFile:3", "Checkpoint:6"]
    # A child at that point already (a new session of it reads the spool from its start).
    assert _forwarded(6, [NEW, RETRIED], base=4) == ["SmallFile:3", "Checkpoint:6"]


def test_a_child_past_the_retry_does_not_get_it_again() -> None:
    """It was sent it then, or got a later version: an old copy must not overwrite that."""
    later = [_small(7, "late"), Checkpoint(seq=7)]
    assert _forwarded(7, [NEW, RETRIED, later], base=4) == []

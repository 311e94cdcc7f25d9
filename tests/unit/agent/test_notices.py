"""The control link's notices (agent/notices.py): the holds in force are told again at each
session to a master that takes it, and an older master is never sent what it cannot decode."""

from __future__ import annotations

from relaysync.agent.notices import Notices
from relaysync.protocol.messages import HopFailed, MassDeleteEnded, MassDeleteHeld


def _held(mapping_id: int, *, resent: bool = False, hold: int = 0) -> MassDeleteHeld:
    return MassDeleteHeld(
        mapping_id=mapping_id, deletes=9, entries=10, root_missing=False, resent=resent, hold=hold
    )


def _drain(notices: Notices) -> list[object]:
    out: list[object] = []
    while (notice := notices.first()) is not None:
        out.append(notice)
        notices.sent()
    return out


def test_the_holds_in_force_are_told_again_at_each_session() -> None:
    notices = Notices()
    notices.session_began(hold_end=True)
    notices.add(_held(1))
    notices.add(_held(2))
    notices.add(MassDeleteEnded(mapping_id=1, reason="paths back"))
    assert _drain(notices) == [
        _held(1),
        _held(2),
        MassDeleteEnded(mapping_id=1, reason="paths back"),
    ]
    notices.session_began(hold_end=True)  # the link came back: mapping 2's hold goes on
    notices.session_began(hold_end=True)  # ... and again before it was sent: told once
    assert _drain(notices) == [_held(2, resent=True)]


def test_an_older_master_is_told_holds_only_as_before() -> None:
    """A master without CAP_HOLD_END would end the link on a MassDeleteEnded: it gets none,
    and no hold told again."""
    notices = Notices()
    notices.add(_held(1))
    notices.add(MassDeleteEnded(mapping_id=1, reason="mapping removed"))
    hop = HopFailed(mapping_id=1, child="c", error="x")
    notices.add(hop)
    notices.add(_held(2))
    notices.session_began(hold_end=False)
    assert _drain(notices) == [_held(1), hop, _held(2)]
    notices.session_began(hold_end=False)
    assert _drain(notices) == []


def test_a_late_end_of_an_older_hold_leaves_the_newer_in_force() -> None:
    """Found in review: holds were told apart by mapping only, so the late "mapping changed"
    end of a source that stopped slowly, after its successor held, ended the new hold too:
    never told again to a master that restarted. Now an end names its hold (0: whichever)."""
    notices = Notices()
    notices.session_began(hold_end=True)
    notices.add(_held(1, hold=10))
    notices.add(_held(1, hold=11))  # the mapping's new source held before the old one ended
    notices.add(MassDeleteEnded(mapping_id=1, reason="mapping changed", hold=10))
    assert len(_drain(notices)) == 3  # the master tells them apart too
    notices.session_began(hold_end=True)
    assert _drain(notices) == [_held(1, resent=True, hold=11)]
    notices.add(MassDeleteEnded(mapping_id=1, reason="source restarted"))  # 0: whichever
    notices.session_began(hold_end=True)
    assert _drain(notices) == [MassDeleteEnded(mapping_id=1, reason="source restarted")]

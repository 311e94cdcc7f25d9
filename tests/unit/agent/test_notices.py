"""The control link's notices (agent/notices.py): the holds in force are told again at each
session to a master that takes it, and an older master is never sent what it cannot decode."""

from __future__ import annotations

from relaysync.agent.notices import Notices
from relaysync.protocol.messages import HopFailed, MassDeleteEnded, MassDeleteHeld


def _held(mapping_id: int, *, resent: bool = False) -> MassDeleteHeld:
    return MassDeleteHeld(
        mapping_id=mapping_id, deletes=9, entries=10, root_missing=False, resent=resent
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

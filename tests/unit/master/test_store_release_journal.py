"""A source journal recreated on the same node (its state directory's journal deleted, the agent
joined again: a new journal id, seqs from 1 again) voids what the master tied to the old one's
seqs. Found in review: `released_upto` only ever went up, and so did the targets' watermarks, so
`relaysync send` of the new journal's changes either waited for the old, higher seq until it
timed out (a target short of it) or took the old watermarks for the new release done at once
(every target at it). The source's ReleaseReport names its journal; another one resets both."""

from __future__ import annotations

from relaysync.cli.send_cmd import _taken
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitReport
from tests.unit.master._reports import SRC, T1, T2, report
from tests.unit.master.test_store_joblog import mapping_id, rec

__all__ = ["mapping_id"]  # the fixture, used by name

OLD, NEW = "0" * 32, "1" * 32


def _send_sees(store: Store, mid: int, release: int) -> tuple[bool, int, int]:
    """What `relaysync send` of `release` reads: taken, the seq it covers, the lowest target's
    watermark (it is done once that reaches the seq)."""
    mode = vars(store.modes.get(mid))
    taken, upto = _taken(mode, release)
    return taken, upto, min(s.watermark for s in store.mapping_status(mid))


def test_a_recreated_journal_starts_releases_and_watermarks_again(
    store: Store, mapping_id: int
) -> None:
    mid = mapping_id
    store.modes.set_mode(mid, "manual")
    first = store.modes.release(mid).release
    store.modes.record_release(mid, first, 1000, SRC, OLD)
    store.record_commit_reports([report(mid, T1, 1000, rec(1000)), report(mid, T2, 900, rec(900))])
    assert _send_sees(store, mid, first) == (True, 1000, 900)  # T2 on its way
    # The source's journal is recreated: at its start it tells the release it holds, in the new
    # journal (seq 5: what its first scan journaled), then the operator sends the next one.
    store.modes.record_release(mid, first, 5, SRC, NEW)
    second = store.modes.release(mid).release
    store.modes.record_release(mid, second, 60, SRC, NEW)
    assert _send_sees(store, mid, second) == (True, 60, 0)  # not 1000: it would wait for ever
    assert {w.target: w.seq for w in store.watermarks(mid)} == {T1: 0, T2: 0}
    # the targets commit the new journal's seqs; the same journal again resets nothing
    store.record_commit_reports([report(mid, T1, 60, rec(60)), report(mid, T2, 60, rec(60))])
    store.modes.record_release(mid, second, 60, SRC, NEW)
    assert _send_sees(store, mid, second) == (True, 60, 60)  # done


def test_the_first_journal_named_and_an_older_agents_reports_void_nothing(
    store: Store, mapping_id: int
) -> None:
    """A mapping upgraded to 0023 knows no journal yet: the first one named is taken as it is;
    an agent from before names none, and its reports go on as before (raise only)."""
    mid = mapping_id
    store.modes.set_mode(mid, "manual")
    release = store.modes.release(mid).release
    store.record_commit_reports([report(mid, T1, 40, rec(40))])
    store.modes.record_release(mid, release, 40, SRC)  # an older agent: no journal id
    store.modes.record_release(mid, release, 40, SRC, OLD)  # upgraded: the first one named
    store.modes.record_release(mid, release, 30, SRC)
    assert _send_sees(store, mid, release)[:2] == (True, 40)
    assert {w.target: w.seq for w in store.watermarks(mid)}[T1] == 40
    store.modes.record_release(mid, release, 7, T1, NEW)  # not the source's: refused
    assert _send_sees(store, mid, release)[:2] == (True, 40)


def test_a_late_report_of_the_journal_a_release_replaced_changes_nothing(
    store: Store, mapping_id: int
) -> None:
    """The source's ReleaseReport names a new journal before its head does; T1's report of the
    old journal then arrives late (its outbox after a reconnect). Before, it put T1's watermark
    back at the old journal's 1000: the new release looked done on T1."""
    mid = mapping_id
    store.modes.set_mode(mid, "manual")
    first = store.modes.release(mid).release
    store.modes.record_release(mid, first, 1000, SRC, OLD)
    store.record_commit_reports([_old(mid, 999)])
    store.modes.record_release(mid, first, 5, SRC, NEW)
    store.record_commit_reports([_old(mid, 1000)])  # late
    assert {w.target: w.seq for w in store.watermarks(mid)} == {T1: 0}


def _old(mid: int, seq: int) -> CommitReport:
    """T1's report of `seq` in the old journal."""
    return report(mid, T1, seq, rec(seq), journal=OLD)

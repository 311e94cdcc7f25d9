"""The master's control server over a real store, CA and TLS: a link is believed for what its
certificate proves, not for what its messages say."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
import pytest
from tests._fleet import Fleet, agent_link, roundtrip

from relaysync.errors import NotFound, StoreError
from relaysync.master.events import EventType
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    MAX_JOURNAL_HEADS,
    CommitRecord,
    CommitReport,
    Error,
    ErrorCode,
    HopFailed,
    JournalHead,
    MassDeleteEnded,
    MassDeleteHeld,
    MetricsReport,
    ReleaseReport,
    SourceFailure,
)

WAIT_S = 30.0  # a generous bound on what the master does after the link read it


def _mapping(fleet: Fleet, source: str, *targets: str) -> int:
    resp = fleet.client.post(
        "/api/mappings",
        json={
            "name": "docs",
            "source": source,
            "source_path": "/srv/docs",
            "targets": [{"server": t, "path": "/srv/docs"} for t in targets],
        },
    )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def _report(mapping_id: int, source: str, target: str, seq: int) -> CommitReport:
    return CommitReport(
        mapping_id=mapping_id,
        source_node=source,
        target_node=target,
        watermark=seq,
        records=(CommitRecord(seq=seq, op="write", path="index.html"),),
    )


async def _refused(framed: object) -> Error:
    """The master's answer to a Register it refuses, then the end of the link."""
    with anyio.fail_after(10):
        message = await framed.receive()  # type: ignore[attr-defined]
        assert isinstance(message, Error), message
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
            await framed.receive()  # type: ignore[attr-defined]
    return message


def test_an_agent_cannot_report_commits_for_another_target(fleet: Fleet) -> None:
    """Agents only report their own commits (AgentService._reporter, also on relays): a report
    for web-b on web-a's link would advance web-b's watermark, write its job log and feed the
    purger before the origin has the content. It is dropped and raises an alarm; web-a's own
    report goes through."""
    src, a, b = fleet.join("src"), fleet.join("web-a"), fleet.join("web-b")
    m = _mapping(fleet, "src", "web-a", "web-b")
    seen: list[CommitReport] = []

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.joblog.subscribe(seen.append)
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(_report(m, src.node_id, b.node_id, 1000))
                await framed.send(_report(m, src.node_id, a.node_id, 3))
                await roundtrip(framed)
            assert control.joblog.watermarks == {(m, src.node_id, a.node_id): 3}
            assert control.refused["forged_commit_report"] == 1

    anyio.run(main)
    assert [r.target_node for r in seen] == [a.node_id]
    alarms = [e.data for e in fleet.events.since(0) if e.type is EventType.ALARM]
    assert [(d["reason"], d["server"]) for d in alarms] == [("forged control message", "web-a")]


def test_a_reports_paths_outside_the_mappings_root_never_reach_the_job_log(fleet: Fleet) -> None:
    """Found in review: a target's records went to the job log and the purger with any path:
    `root/../other/page.html` made every cache of a site purge a URL outside it, `root/..` made
    Varnish ban the whole host, NUL went into the job log. Those records (and removed paths of
    that shape) are dropped, counted, and raise an alarm; the rest of the report, its
    watermark included, is kept."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    seen: list[CommitReport] = []
    hostile = ("docs/../../shop/secret.html", "/etc/passwd", "a\x00b", "docs/..", "docs//x", ".")
    records = [CommitRecord(seq=0, op="write", path=p) for p in hostile]
    records += [
        CommitRecord(seq=1, op="rename", path="docs/a.html", new_path="../b.html"),
        CommitRecord(seq=2, op="delete", path="docs/d", kind="d", removed=("docs/d/x", "../y")),
        CommitRecord(seq=3, op="write", path="docs/page.html"),
    ]
    report = CommitReport(
        mapping_id=m,
        source_node=src.node_id,
        target_node=a.node_id,
        watermark=3,
        records=tuple(records),
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.joblog.subscribe(seen.append)
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(report)
                await roundtrip(framed)
            with anyio.fail_after(WAIT_S):
                while not seen:
                    await anyio.sleep(0.01)
            assert control.joblog.watermarks == {(m, src.node_id, a.node_id): 3}
            assert control.refused["commit_report_path"] == 1

    anyio.run(main)
    [kept] = seen
    assert [(r.seq, r.path, r.removed, r.removed_truncated) for r in kept.records] == [
        (2, "docs/d", ("docs/d/x",), True),  # the rest under it purged by prefix
        (3, "docs/page.html", (), False),
    ]
    alarms = [e.data for e in fleet.events.since(0) if e.type is EventType.ALARM]
    assert [(d["reason"], d["server"]) for d in alarms] == [("forged control message", "web-a")]


def test_reports_are_believed_only_for_the_nodes_part_in_the_mapping(fleet: Fleet) -> None:
    """A commit report of a node that is not a target, or with another source than the
    mapping's; a release report or a held mass delete from a target: dropped."""
    src, a, other = fleet.join("src"), fleet.join("web-a"), fleet.join("other")
    m = _mapping(fleet, "src", "web-a")
    fleet.store.modes.set_mode(m, "manual")
    fleet.store.modes.release(m)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, other, "other") as framed:
                await framed.send(_report(m, src.node_id, other.node_id, 5))  # not a target
                await framed.send(
                    _report(m + 100, src.node_id, other.node_id, 5)
                )  # no such mapping
                await roundtrip(framed)
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(
                    _report(m, other.node_id, a.node_id, 5)
                )  # not the mapping's source
                await framed.send(ReleaseReport(mapping_id=m, release=1, upto_seq=50))
                await framed.send(
                    MassDeleteHeld(mapping_id=m, deletes=9, entries=10, root_missing=False)
                )
                await roundtrip(framed)
            async with agent_link(port, other, "other") as framed:  # not in the mapping: no hops
                await framed.send(HopFailed(mapping_id=m, child=a.node_id, error="x", attempts=5))
                await roundtrip(framed)
            assert control.joblog.watermarks == {}
            assert fleet.store.modes.get(m).released_upto == 0
            async with agent_link(port, src, "src") as framed:  # the source's own go through
                await framed.send(ReleaseReport(mapping_id=m, release=1, upto_seq=7))
                await framed.send(
                    MassDeleteHeld(mapping_id=m, deletes=9, entries=10, root_missing=False)
                )
                await roundtrip(framed)
            assert fleet.store.modes.get(m).released_upto == 7
            assert dict(control.refused) == {
                "commit_report": 3,
                "release_report": 1,
                "mass_delete_held": 1,
                "hop_failed": 1,
            }

    anyio.run(main)
    held = [e.data["server"] for e in fleet.events.since(0) if e.type is EventType.MASS_DELETE_HELD]
    assert held == ["src"]


def _holds(fleet: Fleet, mapping_id: int) -> list[tuple[str, str]]:
    """The mapping's hold events in order: (type, server or reason)."""
    return [
        (e.type.value, str(e.data.get("reason", e.data["server"])))
        for e in fleet.events.since(0)
        if e.type in (EventType.MASS_DELETE_HELD, EventType.MASS_DELETE_ENDED)
        and e.data["mapping_id"] == mapping_id
    ]


def test_the_end_of_a_hold_is_published_and_a_hold_told_again_once(fleet: Fleet) -> None:
    """Found in review: a hold that ended without a confirmation (the source's folder back)
    published nothing, so the console kept its row; and a master that restarted forgot every
    hold (its event ring is in memory). Now the source's MassDeleteEnded publishes
    `mass_delete_ended` (from the mapping's source only), and a hold the source tells again
    when its link comes back is published by a master that does not show it already."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    held = MassDeleteHeld(mapping_id=m, deletes=9, entries=10, root_missing=True)
    again = MassDeleteHeld(mapping_id=m, deletes=9, entries=10, root_missing=True, resent=True)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(held)
                await roundtrip(framed)
            async with agent_link(port, src, "src") as framed:  # the link came back
                await framed.send(again)
                await roundtrip(framed)
            assert _holds(fleet, m) == [("mass_delete_held", "src")]
            async with agent_link(port, a, "web-a") as framed:  # a target has no hold to end
                await framed.send(MassDeleteEnded(mapping_id=m, reason="paths back"))
                await roundtrip(framed)
            assert control.refused["mass_delete_ended"] == 1
            async with agent_link(port, src, "src") as framed:
                await framed.send(held)
                await framed.send(MassDeleteEnded(mapping_id=m, reason="paths back"))
                await roundtrip(framed)
        async with fleet.control_server() as (control, port):  # the master restarted
            async with agent_link(port, src, "src") as framed:
                await framed.send(again)
                await roundtrip(framed)

    anyio.run(main)
    assert _holds(fleet, m) == [
        ("mass_delete_held", "src"),
        ("mass_delete_held", "src"),
        ("mass_delete_ended", "paths back"),
        ("mass_delete_held", "src"),
    ]


def test_only_the_hold_on_record_ends_and_it_goes_on_a_confirm_or_a_delete(fleet: Fleet) -> None:
    """Found in review: a source that starts again tells the end of a hold it may have had
    ("source restarted"): with none on record that is no refusal, nor an event, nor a log line;
    an end naming another hold (a late end of an older one) ends nothing; and a hold on record
    went only on an end, so the table grew with holds confirmed or of mappings deleted. Now
    they go on those events too (the source's end then finds none)."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")

    def held(hold: int) -> MassDeleteHeld:
        return MassDeleteHeld(mapping_id=m, deletes=9, entries=10, root_missing=True, hold=hold)

    def ended(reason: str, hold: int = 0) -> MassDeleteEnded:
        return MassDeleteEnded(mapping_id=m, reason=reason, hold=hold)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(ended("source restarted"))  # it held nothing before
                await roundtrip(framed)
                assert _holds(fleet, m) == []
                await framed.send(held(5))
                await framed.send(ended("mapping changed", hold=4))  # an older hold's
                await roundtrip(framed)
                assert _holds(fleet, m) == [("mass_delete_held", "src")]
                await framed.send(ended("source restarted"))  # whichever is in force
                await framed.send(held(6))
                await roundtrip(framed)
                r = fleet.client.post(f"/api/mappings/{m}/confirm-deletes")
                assert r.status_code == 200, r.text
                await _until(lambda: m not in control._holds)
                await framed.send(ended("confirmed", hold=6))  # the console dropped it already
                await framed.send(held(7))
                await roundtrip(framed)
                assert m in control._holds
            async with agent_link(port, a, "web-a") as framed:  # no hold on record: quietly
                r = fleet.client.delete(f"/api/mappings/{m}")
                assert r.status_code == 204, r.text
                await _until(lambda: not control._holds)
                await framed.send(ended("paths back"))
                await roundtrip(framed)
            assert control.refused["mass_delete_ended"] == 0

    anyio.run(main)
    assert _holds(fleet, m) == [
        ("mass_delete_held", "src"),
        ("mass_delete_ended", "source restarted"),
        ("mass_delete_held", "src"),
        ("mass_delete_held", "src"),
    ]


def _lags(fleet: Fleet, mapping_id: int) -> list[tuple[int, int]]:
    resp = fleet.client.get(f"/api/mappings/{mapping_id}/status")
    assert resp.status_code == 200, resp.text
    return [(t["highest_seq"], t["lag"]) for t in resp.json()["targets"]]


async def _head_taken(fleet: Fleet, framed: FramedStream, m: int, seq: int) -> None:
    """The source reports head `seq` of mapping `m` with its figures; wait until it is noted."""
    await framed.send(_figures((m, seq)))
    await roundtrip(framed)
    await _until(lambda: _lags(fleet, m) == [(seq, seq)])


def _figures(*heads: tuple[int, int] | tuple[int, int, str]) -> MetricsReport:
    return MetricsReport(
        at=time.time(),
        samples=(),
        journal_heads=tuple(
            JournalHead(mapping_id=h[0], seq=h[1], journal_id=h[2] if len(h) > 2 else "")
            for h in heads
        ),
    )


async def _until(condition: Callable[[], object]) -> None:
    """Poll (the heads are written by a task of their own, after the link read them)."""
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.02)


def test_journal_heads_are_believed_from_the_mappings_source_only(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's figures carry its journal head per mapping: the lag shows with no target
    reporting. A target cannot set the head (nor lower it), an older agent's figures (no
    heads) change nothing, and a head the store took from the link is not written again."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    writes: list[object] = []
    record = fleet.store.record_source_heads
    monkeypatch.setattr(
        fleet.store, "record_source_heads", lambda heads: writes.append(heads) or record(heads)
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(_figures((m, 900)))  # a target's word on the head
                await roundtrip(framed)
                await _until(lambda: control.refused["journal_head"] == 1)
            assert _lags(fleet, m) == [(0, 0)]
            async with agent_link(port, src, "src") as framed:
                await framed.send(_figures())  # an older agent: no heads
                await framed.send(_figures((m, 40), (m + 100, 5)))  # one of no such mapping
                await roundtrip(framed)
                await _until(lambda: _lags(fleet, m) == [(40, 40)])
                await _until(lambda: control.refused["journal_head"] == 2)
                await framed.send(_figures((m, 40)))  # unchanged: not written again
                await _head_taken(fleet, framed, m, 45)
            assert dict(control.refused) == {"journal_head": 2}
            assert writes == [
                {a.node_id: [(m, 900, "")]},
                {src.node_id: [(m, 40, ""), (m + 100, 5, "")]},
                {src.node_id: [(m, 45, "")]},
            ]

    anyio.run(main)


def test_a_recreated_source_journal_starts_the_figures_again(fleet: Fleet) -> None:
    """The source's journal was recreated (state lost, agent reinstalled): its seqs count from
    1 again under a new journal id. Its head naming the new journal, even at the seq the old
    one's had, voids the target's watermark of the old journal, and the target's first report
    in the new one sets it lower. Before, the head was not even written again (same seq) and
    the watermarks only ever rose: the API showed no lag for changes not on the target."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    old, new = "1" * 32, "2" * 32

    def committed(seq: int, journal: str) -> CommitReport:
        return msgspec.structs.replace(_report(m, src.node_id, a.node_id, seq), journal_id=journal)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with (
                agent_link(port, a, "web-a") as target,
                agent_link(port, src, "src") as source,
            ):
                await target.send(committed(40, old))
                await source.send(_figures((m, 40, old)))
                await roundtrip(target)
                await roundtrip(source)
                await control.joblog.flush()  # the fleet runs no writer: written here
                await _until(lambda: _lags(fleet, m) == [(40, 0)])
                await source.send(_figures((m, 40, new)))  # recreated, journaled 40 already
                await roundtrip(source)
                await _until(lambda: _lags(fleet, m) == [(40, 40)])
                await target.send(committed(3, new))
                await roundtrip(target)
                assert control.joblog.watermarks == {(m, src.node_id, a.node_id): 3}
                await control.joblog.flush()
                await _until(lambda: _lags(fleet, m) == [(40, 37)])

    anyio.run(main)


def _count_calls(
    monkeypatch: pytest.MonkeyPatch,
    obj: object,
    name: str,
    *,
    first: Callable[[], None] = lambda: None,
) -> list[int]:
    """Replace `obj.name` by a spy counting its calls (in the list returned) that runs `first`
    (which may raise, as a failing store would) before the real method."""
    real, calls = getattr(obj, name), [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        first()
        return real(*args)

    monkeypatch.setattr(obj, name, counted)
    return calls


def test_a_report_of_thousands_of_made_up_mappings_costs_one_write_and_no_read_each(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head per mapping the source names cost a store read each (the members check), inline
    in the link's reading: 4096 made-up ids held the link ~10 s. The store's write checks the
    source itself, all of a report's heads in one transaction."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    made_up = [(m + 1 + i, 7) for i in range(MAX_JOURNAL_HEADS - 1)]

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await roundtrip(framed)  # registered, its assignment pushed
                epoch_reads = _count_calls(monkeypatch, fleet.store, "epoch")
                writes = _count_calls(monkeypatch, fleet.store, "record_source_heads")
                await framed.send(_figures((m, 10), *made_up))
                await roundtrip(framed)
                await _until(lambda: control.refused["journal_head"] == len(made_up))
            assert _lags(fleet, m) == [(10, 10)]
            assert writes == [1]
            assert epoch_reads == [0]

    anyio.run(main)


def test_a_stalled_heads_write_does_not_hold_the_links_reading(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heads are written from a task of their own: while the store's write lock is held
    (here: the write stalls), the link reads on (its commit reports feed purging)."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    record = fleet.store.record_source_heads
    entered, release = threading.Event(), threading.Event()

    def stalled(*args: Any) -> Any:
        entered.set()
        release.wait(WAIT_S)
        return record(*args)

    monkeypatch.setattr(fleet.store, "record_source_heads", stalled)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            try:
                async with agent_link(port, src, "src") as framed:
                    await framed.send(_figures((m, 10)))
                    await _until(entered.is_set)
                    await framed.send(_figures((m, 11)))
                    await roundtrip(framed)  # answered while the write stalls
                    assert _lags(fleet, m) == [(0, 0)]
                    release.set()
                    await _until(lambda: _lags(fleet, m) == [(11, 11)])  # the newest report's
            finally:
                release.set()

    anyio.run(main)


def test_a_head_the_store_refused_is_written_once_the_mapping_is_the_sources_again(
    fleet: Fleet,
) -> None:
    """A head the store skipped (the mapping had another source by then, which the control
    server had not heard yet) is not remembered as written: when the source comes back and
    reports that head again, it is written."""
    src, _, _ = fleet.join("src"), fleet.join("web-a"), fleet.join("other")
    m = _mapping(fleet, "src", "web-a")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await _head_taken(fleet, framed, m, 30)
                # moved in the store only: nothing told the control server (no notify_change)
                fleet.store.update_mapping(m, source="other")
                await framed.send(_figures((m, 40)))
                await roundtrip(framed)
                await _until(lambda: control.refused["journal_head"] == 1)
                assert _lags(fleet, m) == [(0, 0)]  # other's head: none yet
                fleet.store.update_mapping(m, source="src")
                control.notify_change()  # as the API does after every change
                await _head_taken(fleet, framed, m, 40)  # the same head as the one refused

    anyio.run(main)


def test_a_bug_in_the_heads_write_costs_those_heads_not_the_control_server(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heads writer is a task of the control server: an error other than StoreError (a
    bug) ended the server and every agent's link. Now a failed pass costs its heads only: the
    link stays up and the next figures are written."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    failures: list[Exception] = [StoreError("the store is down"), ValueError("a bug")]

    def fail_twice() -> None:
        if failures:
            raise failures.pop(0)

    calls = _count_calls(monkeypatch, fleet.store, "record_source_heads", first=fail_twice)

    async def main() -> None:
        async with fleet.control_server() as (_control, port):
            async with agent_link(port, src, "src") as framed:
                for seq, failed in ((10, 1), (11, 2)):  # StoreError, then the bug
                    await framed.send(_figures((m, seq)))
                    await roundtrip(framed)
                    await _until(lambda n=failed: calls[0] == n)
                await _head_taken(fleet, framed, m, 12)
                await roundtrip(framed)  # the link is still answered

    anyio.run(main)


def test_a_heads_write_failing_again_is_logged_once_a_minute_not_per_report(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store fails, every report of every agent retries: logged each time, 500
    agents made 50 lines a second (review). Repeats are counted and logged once a minute."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")

    def fail() -> None:
        raise StoreError("the store is down")

    calls = _count_calls(monkeypatch, fleet.store, "record_source_heads", first=fail)
    caplog.set_level(logging.WARNING, logger="relaysync.master")

    async def main() -> None:
        async with fleet.control_server() as (_control, port):
            async with agent_link(port, src, "src") as framed:
                for seq in range(10, 30):
                    await framed.send(_figures((m, seq)))
                    await roundtrip(framed)
                    await _until(lambda n=seq - 9: calls[0] == n)

    anyio.run(main)
    said = [r for r in caplog.records if "journal heads not noted" in r.getMessage()]
    assert len(said) == 1 and calls[0] == 20


def test_heads_all_refused_open_no_write_transaction_nor_are_sent_again(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A former source's (or made-up) heads cost a write transaction (BEGIN IMMEDIATE on
    SQLite) at every report. Now the store checks them in a read transaction and writes only
    heads it takes, and the link remembers the ids refused until the mappings change."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    head_writes: list[str] = []
    write = fleet.store._write

    def spied_write(operation: str) -> Any:
        if "head" in operation:
            head_writes.append(operation)
        return write(operation)

    made_up = [(m + 1 + i, 7) for i in range(MAX_JOURNAL_HEADS - 1)]

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await roundtrip(framed)
                monkeypatch.setattr(fleet.store, "_write", spied_write)
                calls = _count_calls(monkeypatch, fleet.store, "record_source_heads")
                await framed.send(_figures((m, 900), *made_up))  # none of them its own
                await roundtrip(framed)
                await _until(lambda: control.refused["journal_head"] == MAX_JOURNAL_HEADS)
                await framed.send(_figures((m, 901), *made_up))  # refused before: not sent
                await roundtrip(framed)
                assert calls == [1]
                control.notify_change()  # the mappings changed: checked again
                await framed.send(_figures((m, 902)))
                await roundtrip(framed)
                await _until(lambda: control.refused["journal_head"] == MAX_JOURNAL_HEADS + 1)
            async with agent_link(port, src, "src") as framed:
                await _head_taken(fleet, framed, m, 40)
            assert calls == [3]
            assert head_writes == ["record source heads"]  # the source's head only
            assert _lags(fleet, m) == [(40, 40)]

    anyio.run(main)


def test_a_stop_does_not_wait_for_a_stuck_heads_write(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heads are the sources' word for the lag figures, reported anew after a restart: a
    heads write stuck on the store (up to its lock or statement timeout) held the control
    server's end past the master's stop timeout. A stop now leaves it behind."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    def stuck(*args: Any) -> Any:
        entered.set()
        release.wait(WAIT_S)
        returned.set()
        return {}

    monkeypatch.setattr(fleet.store, "record_source_heads", stuck)

    async def no_job_log() -> None:
        pass

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(_figures((m, 10)))
                await roundtrip(framed)
                await _until(entered.is_set)
            await control.stop(no_job_log)
        assert not returned.is_set()  # the server ended while the write was still stuck

    try:
        anyio.run(main)
    finally:
        release.set()
        returned.wait(WAIT_S)


def test_a_source_moved_away_and_back_has_its_unchanged_head_written_again(
    fleet: Fleet,
) -> None:
    """A move deletes the former source's head; its link's memory of what the store took goes
    with the change (notify_change), so the same head, reported again, is written."""
    src, _, _ = fleet.join("src"), fleet.join("web-a"), fleet.join("other")
    m = _mapping(fleet, "src", "web-a")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await _head_taken(fleet, framed, m, 30)
                for source in ("other", "src"):
                    fleet.store.update_mapping(m, source=source)
                    control.notify_change()
                assert _lags(fleet, m) == [(0, 0)]
                await _head_taken(fleet, framed, m, 30)

    anyio.run(main)


def test_a_mapping_created_after_the_link_came_up_is_believed(fleet: Fleet) -> None:
    """The control server caches who is in which mapping; a report for a mapping it has not
    seen yet reads the store again instead of being dropped."""
    src, a = fleet.join("src"), fleet.join("web-a")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                first = _mapping(fleet, "src", "web-a")
                await framed.send(_report(first, src.node_id, a.node_id, 1))
                await roundtrip(framed)
                fleet.client.post(
                    "/api/mappings",
                    json={
                        "name": "more",
                        "source": "src",
                        "source_path": "/srv/more",
                        "targets": [{"server": "web-a", "path": "/srv/more"}],
                    },
                )
                second = fleet.store.get_mapping("more").id
                await framed.send(_report(second, src.node_id, a.node_id, 2))
                await roundtrip(framed)
            assert control.joblog.watermarks == {
                (first, src.node_id, a.node_id): 1,
                (second, src.node_id, a.node_id): 2,
            }

    anyio.run(main)


def test_a_removed_server_does_not_come_back_by_reconnecting(fleet: Fleet) -> None:
    """DELETE /api/servers/{name} revokes the node: its certificate (825 days, no CRL) is refused
    on the control port, the agent is told why, and its Register re-creates nothing."""
    old = fleet.join("web-1")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            assert fleet.client.delete("/api/servers/web-1").status_code == 204
            async with agent_link(port, old, "web-1") as framed:
                error = await _refused(framed)
            assert error.code is ErrorCode.UNKNOWN_PEER
            assert "server 'web-1' was removed from the fleet" in error.detail
            assert "join again with a new join token" in error.detail
            with pytest.raises(NotFound):
                fleet.store.get_server(old.node_id)
            assert old.node_id not in control.links
            assert control.refused["removed_node"] == 1

    anyio.run(main)


def test_a_node_that_never_joined_is_refused(fleet: Fleet) -> None:
    """A certificate of the fleet's CA whose node is not in the store (removed before revocation
    was recorded, or never joined) gets no link; one named like the master neither."""
    stranger, impostor = fleet.issue("stranger"), fleet.issue("relaysync-master")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, stranger, "stranger") as framed:
                assert "this master does not know it" in (await _refused(framed)).detail
            async with agent_link(port, impostor, "x") as framed:
                assert "name reserved for the master" in (await _refused(framed)).detail
            assert control.links == {}

    anyio.run(main)
    assert fleet.store.list_servers() == []


def test_deleting_a_server_drops_its_live_control_link(fleet: Fleet) -> None:
    old = fleet.join("web-1")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, old, "web-1") as framed:
                await roundtrip(framed)
                assert old.node_id in control.links
                assert fleet.client.delete("/api/servers/web-1").status_code == 204
                # At once: not at the link's next state write (every 5 s), which finds no server.
                with (
                    anyio.fail_after(2),
                    pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)),
                ):
                    while True:  # a Ping sent as the removal lands may still be answered
                        await roundtrip(framed)
                assert old.node_id not in control.links
                with pytest.raises(NotFound):
                    fleet.store.get_server(old.node_id)  # the link's state writes re-create nothing

    anyio.run(main)


def test_a_deleted_servers_name_joins_again_with_a_fresh_token(fleet: Fleet) -> None:
    """An operator re-adds a machine: a new key under the old name registers as usual."""
    old = fleet.join("web-1")
    assert fleet.client.delete("/api/servers/web-1").status_code == 204
    new = fleet.join("web-1")
    assert new.node_id != old.node_id

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, new, "web-1") as framed:
                await roundtrip(framed)
                assert control.links[new.node_id].name == "web-1"
            async with agent_link(port, old, "web-1") as framed:
                await _refused(framed)

    anyio.run(main)
    assert fleet.store.get_server("web-1").node_id == new.node_id


def test_an_agent_cannot_register_under_another_name_than_it_joined_with(fleet: Fleet) -> None:
    """The name comes from the join (the certificate the CA signed), not from Register: web-a
    cannot take the name db-1 (e.g. of a server just deleted, that mappings are then made for)."""
    a = fleet.join("web-a")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "db-1") as framed:
                await roundtrip(framed)
                assert control.links[a.node_id].name == "web-a"

    anyio.run(main)
    assert fleet.store.get_server(a.node_id).name == "web-a"
    with pytest.raises(NotFound):
        fleet.store.get_server("db-1")


def test_a_target_removed_from_a_mapping_is_no_longer_believed(fleet: Fleet) -> None:
    """A positive answer was served from the members cache without looking at the config epoch:
    web-b, taken out of the mapping, could still advance its watermark and feed the purger.
    Every config change calls notify_change (the API's and the router's on_change)."""
    src, b = fleet.join("src"), fleet.join("web-b")
    fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a", "web-b")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, b, "web-b") as framed:
                await framed.send(_report(m, src.node_id, b.node_id, 1))
                await roundtrip(framed)
                resp = fleet.client.patch(
                    f"/api/mappings/{m}",
                    json={"targets": [{"server": "web-a", "path": "/srv/docs"}]},
                )
                assert resp.status_code == 200, resp.text
                control.notify_change()
                await framed.send(_report(m, src.node_id, b.node_id, 2))
                await roundtrip(framed)
            assert control.joblog.watermarks == {(m, src.node_id, b.node_id): 1}
            assert control.refused["commit_report"] == 1

    anyio.run(main)


def test_a_server_revoked_while_mappings_use_it_loses_its_link_at_once(fleet: Fleet) -> None:
    """A stolen node key could not be revoked while a mapping used the node: DELETE answered
    422 and its link kept being believed. POST /api/servers/{name}/revoke works regardless: the
    link closes, a reconnect is refused, the node stays listed (down) as a failed target of its
    mappings, and no other agent is told of it as a peer. DELETE keeps its meaning."""
    src, web1 = fleet.join("src"), fleet.join("web-1")
    fleet.join("web-2")
    m = _mapping(fleet, "src", "web-1", "web-2")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, web1, "web-1") as framed:
                await roundtrip(framed)
                assert web1.node_id in control.links
                assert fleet.client.delete("/api/servers/web-1").status_code == 422
                r = fleet.client.post("/api/servers/web-1/revoke")
                assert r.status_code == 200, r.text
                assert r.json()["failed_in"] == [m] and r.json()["source_of"] == []
                with anyio.fail_after(10):  # the link is closed by the master
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                        while True:
                            await framed.receive()
            assert web1.node_id not in control.links
            async with agent_link(port, web1, "web-1") as framed:
                error = await _refused(framed)
            assert error.code is ErrorCode.UNKNOWN_PEER

    anyio.run(main)
    assert fleet.store.is_revoked(web1.node_id)
    assert fleet.store.get_server("web-1").state == "down"
    assert not fleet.store.set_server_state(web1.node_id, "up", 0.0)
    failed = [(f.mapping_id, f.node_id, f.reason) for f in fleet.store.routing.failed()]
    assert failed == [(m, web1.node_id, "server revoked by an operator")]
    routes = fleet.client.get("/api/mappings/docs/routes").json()
    assert [(f["target"], f["reason"]) for f in routes["failed"]] == [
        ("web-1", "server revoked by an operator")
    ]  # the operator sees it there
    peers = {p.name for p in fleet.store.assignment_for(src.node_id).peers}
    assert peers == {"web-2"}
    assert [e.type for e in fleet.events.since(0)].count(EventType.SERVER_REVOKED) == 1
    fleet.client.delete("/api/mappings/docs")
    assert fleet.client.delete("/api/servers/web-1").status_code == 204  # now removable


def _failing(*mapping_ids: int) -> MetricsReport:
    return MetricsReport(
        at=time.time(),
        samples=(),
        source_failures=tuple(
            SourceFailure(mapping_id=m, error="FileNotFoundError: /srv/site", since=1_700_000_000.0)
            for m in mapping_ids
        ),
    )


def test_source_failures_are_believed_from_the_mappings_source_only(fleet: Fleet) -> None:
    """Why a source cannot run shows in the mapping status; a target cannot say it (refused,
    once), the source's report without it ends it, each change is an event."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")

    def kinds() -> list[EventType]:
        wanted = (EventType.SOURCE_FAILING, EventType.SOURCE_FAILURE_ENDED)
        return [e.type for e in fleet.events.since(0) if e.type in wanted]

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(_failing(m))
                await framed.send(_failing(m))  # not counted again
                await roundtrip(framed)
                await _until(lambda: control.refused["source_failure"] == 1)
            assert control.source_failures.get(m, a.node_id) is None and kinds() == []
            async with agent_link(port, src, "src") as framed:
                await framed.send(_failing(m))
                await framed.send(_failing(m))  # the same reason: one event
                await roundtrip(framed)
                await _until(lambda: control.source_failures.get(m, src.node_id) is not None)
                await framed.send(_failing())
                await roundtrip(framed)
                await _until(lambda: control.source_failures.get(m, src.node_id) is None)
            assert kinds() == [EventType.SOURCE_FAILING, EventType.SOURCE_FAILURE_ENDED]
            assert dict(control.refused) == {"source_failure": 1}

    anyio.run(main)


def test_a_failure_reason_with_control_characters_is_cleaned_and_keeps_the_link(
    fleet: Fleet,
) -> None:
    """An agent's reason with a tab, a newline or a terminal escape (a path may hold them) is
    display text: made one safe line on the master, never a reason to drop the agent's link
    (which the next report, carrying it again, would drop again)."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    raw = MetricsReport(
        at=time.time(),
        samples=(),
        source_failures=(
            SourceFailure(mapping_id=m, error="OSError: /srv/a\tb\n\x1b[2Jc", since=1.0),
        ),
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(raw)
                await roundtrip(framed)  # the link still answers
                await _until(lambda: control.source_failures.get(m, src.node_id) is not None)
                record = control.source_failures.get(m, src.node_id)
                assert record is not None and record.error == "OSError: /srv/a b  [2Jc"

    anyio.run(main)

"""The master's job-log writer, behind the real control server, when the store refuses a record:
only that record is lost, every other agent's commits are written, and the writer goes on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio
import pytest
from sqlalchemy.exc import OperationalError
from tests._fleet import TIMEOUT_S, Fleet, agent_link, roundtrip

from relaysync.errors import StoreError
from relaysync.master.control import ControlServer
from relaysync.protocol.messages import CommitRecord, CommitReport

POISON = "poison.html"


def _mapping(fleet: Fleet, target: str) -> int:
    resp = fleet.client.post(
        "/api/mappings",
        json={
            "name": f"docs-{target}",
            "source": "src",
            "source_path": "/srv/docs",
            "targets": [{"server": target, "path": "/srv/docs"}],
        },
    )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def _refusing(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, refuse: Callable[[int], BaseException | None]
) -> None:
    """The store's job-log write, failing as `refuse(call number)` says when a batch holds the
    poison record: a value the store cannot take that decoding let through (the seam: the store)."""
    real = fleet.store.record_commit_reports
    calls = 0

    def record(reports: Sequence[CommitReport]) -> None:
        nonlocal calls
        if any(rec.path == POISON for r in reports for rec in r.records):
            calls += 1
            failure = refuse(calls)
            if failure is not None:
                raise failure
        real(reports)

    monkeypatch.setattr(fleet.store, "record_commit_reports", record)


def _report(m: int, source: str, target: str, paths: list[str]) -> CommitReport:
    records = tuple(CommitRecord(seq=i, op="write", path=p) for i, p in enumerate(paths, 1))
    return CommitReport(
        mapping_id=m, source_node=source, target_node=target, watermark=len(paths), records=records
    )


async def _written(fleet: Fleet, control: ControlServer, m: int, seqs: int) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while control.joblog._queue or len(fleet.store.job_log(mapping_id=m)) < seqs:
            await anyio.sleep(0.05)


def _send_and_wait(fleet: Fleet, *, poison_flows: bool = False) -> tuple[int, int]:
    """web-a reports a poison record between two good ones, then web-b reports its own."""
    src, a, b = fleet.join("src"), fleet.join("web-a"), fleet.join("web-b")
    ma, mb = _mapping(fleet, "web-a"), _mapping(fleet, "web-b")
    bad = _report(ma, src.node_id, a.node_id, ["a1.html", POISON, "a3.html"])
    good = _report(mb, src.node_id, b.node_id, ["b1.html"])

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with anyio.create_task_group() as tg:
                await tg.start(control.joblog.serve)  # as the master runs it, in its task group
                async with agent_link(port, a, "web-a") as fa, agent_link(port, b, "web-b") as fb:
                    await fa.send(bad)
                    await roundtrip(fa)
                    await fb.send(good)
                    await roundtrip(fb)
                    await _written(fleet, control, mb, 1)
                    await _written(fleet, control, ma, 3 if poison_flows else 2)
                tg.cancel_scope.cancel()

    anyio.run(main)
    return ma, mb


@pytest.mark.parametrize(
    "failure",
    [
        StoreError("record commit reports: value too long for type character varying(32)"),
        OverflowError("Python int too large to convert to SQLite INTEGER"),  # not a StoreError
    ],
    ids=["store-error", "overflow"],
)
def test_a_record_the_store_refuses_is_dropped_alone_and_the_writer_goes_on(
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: BaseException,
) -> None:
    """Was: a StoreError put the batch back in front for ever, so web-b's commits (and every
    later one) were never written; any other exception ended the writer's task, and with it the
    master's task group (the master stopped)."""
    _refusing(fleet, monkeypatch, lambda _call: failure)
    ma, mb = _send_and_wait(fleet)
    assert [(r.seq, r.path) for r in fleet.store.job_log(mapping_id=mb)] == [(1, "b1.html")]
    assert sorted((r.seq, r.path) for r in fleet.store.job_log(mapping_id=ma)) == [
        (1, "a1.html"),
        (3, "a3.html"),
    ]
    assert [w.seq for w in fleet.store.watermarks(ma)] == [3]
    dropped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dropped) == 1, [r.getMessage() for r in dropped]
    text = dropped[0].getMessage()
    assert f"mapping {ma}" in text and "seq 2" in text and POISON in text
    assert fleet.joined["web-a"]["node_id"][:16] in text
    # a bug: its traceback once (with the batch's first failure), not once per piece or drop
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == (0 if isinstance(failure, StoreError) else 1), traced


def test_a_store_that_is_down_loses_nothing(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database failing (down, locked, disk full) is retried, never split and dropped."""

    def down_for_a_while(call: int) -> BaseException | None:
        if call > 12:  # past the retries and past a split
            return None
        cause = OperationalError("INSERT ...", {}, Exception("server closed the connection"))
        failure = StoreError(f"record commit reports: {cause}")
        failure.__cause__ = cause
        return failure

    _refusing(fleet, monkeypatch, down_for_a_while)
    ma, mb = _send_and_wait(fleet, poison_flows=True)
    assert len(fleet.store.job_log(mapping_id=ma)) == 3
    assert len(fleet.store.job_log(mapping_id=mb)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

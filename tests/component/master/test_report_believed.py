"""What the master's control server believes of a commit report beyond who sends it, over a real
store, CA and TLS: byte figures the job log can hold, and a route of node names."""

from __future__ import annotations

import anyio
from tests._fleet import Fleet, agent_link, roundtrip
from tests.component.master.test_control_trust import _mapping

from relaysync.master._report_bounds import INT64_MAX, MAX_FILE_BYTES
from relaysync.protocol.messages import CommitRecord, CommitReport


def _report(
    mapping_id: int,
    source: str,
    target: str,
    seq: int,
    *records: CommitRecord,
    route: tuple[str, ...] = (),
) -> CommitReport:
    return CommitReport(
        mapping_id=mapping_id,
        source_node=source,
        target_node=target,
        watermark=seq,
        records=records or (CommitRecord(seq=seq, op="write", path="index.html"),),
        route=route,
    )


def test_a_report_over_what_the_job_log_holds_is_refused_and_counted(fleet: Fleet) -> None:
    """A record's size or wire bytes past MAX_FILE_BYTES, or wire bytes summing past the BIGINT
    column: refused and counted (they failed every job-log write they were in, holding up every
    agent's reports). A record at the bound is taken and stored."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    over = MAX_FILE_BYTES + 1
    many = -(-INT64_MAX // MAX_FILE_BYTES) + 1  # records at the bound summing past INT64_MAX
    refused = [
        _report(m, src.node_id, a.node_id, 1, CommitRecord(seq=1, op="write", path="a", size=over)),
        _report(
            m,
            src.node_id,
            a.node_id,
            2,
            CommitRecord(seq=2, op="write", path="b", wire_bytes=2**62),
        ),
        _report(
            m,
            src.node_id,
            a.node_id,
            many,
            *(
                CommitRecord(seq=n, op="write", path=f"c{n}", wire_bytes=MAX_FILE_BYTES)
                for n in range(1, many + 1)
            ),
        ),
    ]
    at_bound = CommitRecord(
        seq=3, op="write", path="d", size=MAX_FILE_BYTES, wire_bytes=MAX_FILE_BYTES
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                for report in refused:
                    await framed.send(report)
                await framed.send(_report(m, src.node_id, a.node_id, 3, at_bound))
                await roundtrip(framed)
            assert control.refused["commit_report_bounds"] == 3
            assert control.joblog.watermarks == {(m, src.node_id, a.node_id): 3}
            await control.joblog.flush()

    anyio.run(main)
    assert [(r.seq, r.size) for r in fleet.store.job_log(mapping_id=m)] == [(3, MAX_FILE_BYTES)]


def test_a_route_is_kept_only_made_of_node_names(fleet: Fleet) -> None:
    """A route with markup or separators in a name was stored as it came (the console shows
    it). Such a report is kept without its route (unknown) and counted, not refused. A route of
    well-formed names is kept whether or not they are servers now: a source running under
    another name than it joined with, or a relay removed since the report was made (it waited
    in the agent's outbox), must not lose it (a check against the servers dropped those)."""
    src, a = fleet.join("src"), fleet.join("web-a")
    fleet.join("relay")
    m = _mapping(fleet, "src", "web-a")
    s, t = src.node_id, a.node_id

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(_report(m, s, t, 1, route=("src", "relay")))
                await framed.send(_report(m, s, t, 2, route=("src", "no-such><script>")))
                await framed.send(_report(m, s, t, 3, route=("src.example.com",)))
                await framed.send(_report(m, s, t, 4, route=("src", "relay>web-b")))
                await roundtrip(framed)
                assert fleet.client.delete("/api/servers/relay").status_code == 204
                await framed.send(_report(m, s, t, 5, route=("src", "relay")))
                await roundtrip(framed)
            assert control.refused["commit_report_route"] == 2
            await control.joblog.flush()

    anyio.run(main)
    advances = fleet.store.advances(mapping_id=m)
    assert [(x.to_seq, x.route) for x in advances] == [
        (5, "src>relay>web-a"),
        (4, ""),
        (3, "src.example.com>web-a"),
        (2, ""),
        (1, "src>relay>web-a"),
    ]

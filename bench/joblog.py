"""The master's bookkeeping under load: 10,000 changes a second to 16 targets (issue 4).

Every target reports every change it commits; the master folds the reports into one change row
per change, a watermark per target and the exceptions (DESIGN.md "Bookkeeping that scales").
This feeds one second's worth of that load (16 reports of 10,000 records, as the agents send
them) straight into the store, in-process, and times it: the store keeps up if that takes
under a second. Runs on SQLite, and on PostgreSQL too when RELAYSYNC_BENCH_PG_URL is set.
Then, on SQLite, the same load through the master's job-log writer (master/joblog.py), in
reports of MAX_REPORT_RECORDS as agents split them: the time of `add` (the control link's hot
path) and of the flush, without and with a `taken` callback per report (report_ack links).

    python3 bench/joblog.py [--changes N] [--targets N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio  # noqa: E402
from _common import console, emit_json, goal, machine_info, median, print_machine  # noqa: E402

from relaysync.master.events import EventBus  # noqa: E402
from relaysync.master.joblog import JobLogWriter  # noqa: E402
from relaysync.master.store import Store  # noqa: E402
from relaysync.protocol.messages import (  # noqa: E402
    MAX_REPORT_RECORDS,
    CommitRecord,
    CommitReport,
)


def load(
    mapping_id: int, source: str, targets: list[str], changes: int, first: int, per_report: int
) -> list[CommitReport]:
    """`changes` new changes committed on every target, in reports of `per_report` records."""
    now = time.time()
    return [
        CommitReport(
            mapping_id=mapping_id,
            source_node=source,
            target_node=t,
            watermark=start + per_report - 1,
            records=tuple(
                CommitRecord(
                    seq=q,
                    op="write",
                    path=f"site/d{q % 100}/f{q}.html",
                    size=4096,
                    wire_bytes=4200,
                    duration_ms=1.0,
                    committed_at=now,
                    changed_at=now - 0.01,
                )
                for q in range(start, min(start + per_report, first + changes))
            ),
            route=("src",),
        )
        for start in range(first, first + changes, per_report)
        for t in targets
    ]


def one_second(
    store: Store,
    mapping_id: int,
    source: str,
    targets: list[str],
    changes: int,
    first: int,
    *,
    batched: bool,
) -> float:
    """Feed `changes` new changes committed on every target; return the seconds the store took."""
    reports = load(mapping_id, source, targets, changes, first, changes)
    started = time.perf_counter()
    if batched:  # as master/joblog.py writes under load: everything queued since its last write
        store.record_commit_reports(reports)
    else:  # one transaction per target's report: the writer's worst case
        for report in reports:
            store.record_commit_reports([report])
    return time.perf_counter() - started


def through_writer(
    url: str, changes: int, n_targets: int, rounds: int, *, acks: bool
) -> tuple[float, float]:
    """The load through JobLogWriter.add and a flush; returns the median ms of add, s of flush."""
    store, mapping_id, nodes = _fleet(url, n_targets)
    writer = JobLogWriter(store, EventBus())
    taken = 0

    def on_taken() -> None:
        nonlocal taken
        taken += 1

    adds, flushes = [], []
    for r in range(rounds):
        reports = load(
            mapping_id, nodes[0], nodes[1:], changes, 1 + r * changes, MAX_REPORT_RECORDS
        )
        started = time.perf_counter()
        for report in reports:
            writer.add(report, taken=on_taken if acks else None)
        added = time.perf_counter()
        anyio.run(writer.flush)
        adds.append((added - started) * 1000)
        flushes.append(time.perf_counter() - added)
    assert taken == (len(reports) * rounds if acks else 0)
    console.print(
        f"  sqlite writer {'with' if acks else 'without'} acks: add {median(adds):.2f} ms, "
        f"flush {median(flushes):.2f} s per second of load ({len(reports)} reports)"
    )
    store.close()
    return median(adds), median(flushes)


def _fleet(url: str, n_targets: int) -> tuple[Store, int, list[str]]:
    store = Store(url)
    store.migrate()
    nodes = [f"{i:064x}" for i in range(n_targets + 1)]
    for i, node in enumerate(nodes):
        store.upsert_server(node_id=node, name=f"n{i}", region="r", group="g", address=f"n{i}:1")
    name = f"bench-{time.time_ns()}"
    mapping = store.create_mapping(  # folders of its own: one server's targets must not nest
        name=name,
        source="n0",
        source_path=f"/srv/{name}/a",
        targets=[(f"n{i}", f"/srv/{name}/b") for i in range(1, n_targets + 1)],
    )
    return store, mapping.id, nodes


def run(
    url: str, label: str, changes: int, n_targets: int, rounds: int, *, batched: bool
) -> list[float]:
    store, mapping_id, nodes = _fleet(url, n_targets)
    times = []
    for r in range(rounds):
        seconds = one_second(
            store, mapping_id, nodes[0], nodes[1:], changes, 1 + r * changes, batched=batched
        )
        times.append(seconds)
        console.print(
            f"  {label} {'batched' if batched else 'per report'} round {r + 1}: {n_targets} x {changes:,} records in {seconds:.2f} s "
            f"({n_targets * changes / seconds:,.0f} records/s)"
        )
    store.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=10_000, help="changes per second")
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    results: dict[str, object] = {
        "bench": "joblog",
        "changes_per_s": args.changes,
        "targets": args.targets,
        **info,
    }
    with tempfile.TemporaryDirectory() as tmp:
        databases = [("sqlite", f"sqlite:///{tmp}/master.db")]
        if os.environ.get("RELAYSYNC_BENCH_PG_URL"):
            databases.append(("postgres", os.environ["RELAYSYNC_BENCH_PG_URL"]))
        for label, url in databases:
            for batched in (True, False):
                times = run(url, label, args.changes, args.targets, args.rounds, batched=batched)
                seconds = median(times)
                key = label if batched else f"{label}_per_report"
                results[f"seconds_per_load_second_{key}"] = round(seconds, 3)
                results[f"records_per_s_{key}"] = round(args.targets * args.changes / seconds)
                if batched:
                    goal(
                        f"{label}: one second of {args.changes:,} changes to {args.targets} targets stored "
                        f"in under 1 s",
                        seconds < 1.0,
                        f"{seconds:.2f} s",
                    )
        for acks in (False, True):
            add_ms, flush_s = through_writer(
                f"sqlite:///{tmp}/master.db", args.changes, args.targets, args.rounds, acks=acks
            )
            key = "writer_acks" if acks else "writer"
            results[f"add_ms_per_load_second_{key}"] = round(add_ms, 2)
            results[f"flush_seconds_per_load_second_{key}"] = round(flush_s, 3)
    emit_json(results)


if __name__ == "__main__":
    main()

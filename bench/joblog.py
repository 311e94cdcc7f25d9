"""The master's bookkeeping under load: 10,000 changes a second to 16 targets (issue 4).

Every target reports every change it commits; the master folds the reports into one change row
per change, a watermark per target and the exceptions (DESIGN.md "Bookkeeping that scales").
This feeds one second's worth of that load (16 reports of 10,000 records, as the agents send
them) straight into the store, in-process, and times it: the store keeps up if that takes
under a second. Runs on SQLite, and on PostgreSQL too when RELAYSYNC_BENCH_PG_URL is set.

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

from _common import console, emit_json, goal, machine_info, median, print_machine  # noqa: E402

from relaysync.master.store import Store  # noqa: E402
from relaysync.protocol.messages import CommitRecord, CommitReport  # noqa: E402


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
    now = time.time()
    reports = [
        CommitReport(
            mapping_id=mapping_id,
            source_node=source,
            target_node=t,
            watermark=first + changes - 1,
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
                for q in range(first, first + changes)
            ),
            route=("src",),
        )
        for t in targets
    ]
    started = time.perf_counter()
    if batched:  # as master/joblog.py writes under load: everything queued since its last write
        store.record_commit_reports(reports)
    else:  # one transaction per target's report: the writer's worst case
        for report in reports:
            store.record_commit_reports([report])
    return time.perf_counter() - started


def run(
    url: str, label: str, changes: int, n_targets: int, rounds: int, *, batched: bool
) -> list[float]:
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
    times = []
    for r in range(rounds):
        seconds = one_second(
            store, mapping.id, nodes[0], nodes[1:], changes, 1 + r * changes, batched=batched
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
    emit_json(results)


if __name__ == "__main__":
    main()

"""The CPU of the per-file state rsync does not keep, on a first copy of many small files.

relaysync keeps, for every file, a journal record and a manifest row on the source, a manifest
row on each target and a job-log row on the master: that is what makes a catch-up after a
restart cost kilobytes instead of a rescan, and what the console's job log shows. rsync keeps
nothing between runs. This prices that state in-process, on the same tree as bulk.py's 10k case
(10,000 files of 4 KiB in 100 folders), phase by phase, and sets it beside the total CPU
(user + system, all its processes) of a local `rsync -a` of that tree, in the same run:

    source_scan        ChangeRecorder.detect per top-level folder (walk, lstat, hash): not state,
                       shown for scale (rsync's sender reads every file too)
    journal_append     Journal.append of the scan's changes (no fsync: durability "fast")
    source_manifest    ChangeRecorder.apply (the source manifest's rows)
    journal_read       Journal.read of every record, as a link does
    target_manifest    Manifest.put_many in batches of 256 (a receiver's commit batch)
    master_job_log     Store.record_commit_reports of reports of 256 records (one per checkpoint),
                       about FLUSH_RECORDS records a write (the job-log writer's batch under load)

    python3 bench/bookkeeping.py [--files N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import console, emit_json, machine_info, median, print_machine, require_tools, rmtree  # noqa: E402
from bulk import make_small_tree  # noqa: E402

from relaysync.constants import FSYNC_BATCH_MAX_FILES  # noqa: E402
from relaysync.master.joblog import FLUSH_RECORDS  # noqa: E402
from relaysync.master.store import Store  # noqa: E402
from relaysync.protocol.messages import CommitRecord, CommitReport  # noqa: E402
from relaysync.watch._fsevent import FsEvent  # noqa: E402
from relaysync.watch.filters import PathFilter  # noqa: E402
from relaysync.watch.journal import Journal  # noqa: E402
from relaysync.watch.manifest import Entry, Manifest  # noqa: E402
from relaysync.watch.recorder import ChangeRecorder  # noqa: E402

STATE = ("journal_append", "source_manifest", "journal_read", "target_manifest", "master_job_log")
READ_RECORDS = 2_000  # journal records per read, as the links read them


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Adds up this process's CPU seconds per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = cpu_s()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + cpu_s() - before


def one_run(tree: Path, work: Path) -> dict[str, float]:
    """Every phase once, on fresh state; return CPU seconds per phase."""
    meter = Meter()
    work.mkdir(parents=True)
    manifest, journal = Manifest(work / "source.db"), Journal(work / "journal", fsync=False)
    recorder = ChangeRecorder(tree, manifest, PathFilter())
    entries: list[Entry] = []
    for name in sorted(os.listdir(tree)):  # as the source agent journals a first scan
        with meter.phase("source_scan"):
            changes = recorder.detect([FsEvent(kind="rescan", path=name)]).changes
        with meter.phase("journal_append"):
            records = journal.append(changes)
        with meter.phase("source_manifest"):
            recorder.apply(records)
        entries.extend(r.entry for r in records if r.entry is not None and r.entry.kind == "f")
    with meter.phase("journal_read"):
        seq = 0
        while batch := journal.read(seq, READ_RECORDS):
            seq = batch[-1].seq
    journal.close()
    manifest.close()

    target = Manifest(work / "target.db")
    batches = [
        entries[i : i + FSYNC_BATCH_MAX_FILES]
        for i in range(0, len(entries), FSYNC_BATCH_MAX_FILES)
    ]
    for batch in batches:
        with meter.phase("target_manifest"):
            target.put_many(batch)
    target.close()

    store = Store(f"sqlite:///{work}/master.db")
    store.migrate()
    source_node, target_node = "a" * 64, "b" * 64
    store.upsert_server(node_id=source_node, name="src", region="r", group="g", address="src:1")
    store.upsert_server(node_id=target_node, name="t1", region="r", group="g", address="t1:1")
    mapping = store.create_mapping(
        name="bench", source="src", source_path=str(tree), targets=[("t1", "/srv/t1")]
    )
    now = time.time()
    reports, seq = [], 0
    for batch in batches:  # one report per checkpoint, as a target sends them
        records_ = tuple(
            CommitRecord(
                seq=seq + i + 1,
                op="write",
                path=e.path,
                size=e.size,
                wire_bytes=e.size + 80,
                duration_ms=0.1,
                committed_at=now,
                changed_at=now - 0.01,
            )
            for i, e in enumerate(batch)
        )
        seq += len(batch)
        reports.append(
            CommitReport(
                mapping_id=mapping.id,
                source_node=source_node,
                target_node=target_node,
                watermark=seq,
                records=records_,
            )
        )
    per_write = max(
        1, FLUSH_RECORDS // FSYNC_BATCH_MAX_FILES
    )  # the writer takes what queued meanwhile
    for i in range(0, len(reports), per_write):
        with meter.phase("master_job_log"):
            store.record_commit_reports(reports[i : i + per_write])
    store.close()
    return meter.seconds


def rsync_cpu(tree: Path, dest: Path) -> tuple[float, float, float]:
    """(wall s, user CPU s, system CPU s) of all the processes of `rsync -a tree/ dest/`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["rsync", "-a", f"{tree}/", f"{dest}/"], check=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp dir (default /tmp)"
    )
    args = parser.parse_args()
    require_tools("rsync")
    info = machine_info()
    print_machine(info)
    results: dict[str, object] = {
        "bench": "bookkeeping",
        "files": args.files,
        "runs": args.runs,
        **info,
    }
    work = Path(tempfile.mkdtemp(prefix="relaysync-bookkeeping-", dir=args.workdir))
    try:
        tree = work / "tree"
        make_small_tree(tree, args.files)
        console.print(f"tree: {args.files:,} files of 4 KiB in 100 folders (page cache warm)")
        phases: dict[str, list[float]] = {}
        rsync_walls: list[float] = []
        rsync_cpus: list[float] = []
        rsync_users: list[float] = []
        for run in range(
            args.runs
        ):  # round-robin: ours, then rsync, so both see the same machine state
            seconds = one_run(tree, work / f"state{run}")
            for phase, s in seconds.items():
                phases.setdefault(phase, []).append(s)
            wall, user, system = rsync_cpu(tree, work / f"rsync{run}")
            rsync_walls.append(wall)
            rsync_cpus.append(user + system)
            rsync_users.append(user)
            state = sum(seconds[p] for p in STATE)
            console.print(
                f"  run {run + 1}: state {state:.3f} CPU-s ("
                + ", ".join(f"{p} {seconds[p]:.3f}" for p in STATE)
                + f"); scan {seconds['source_scan']:.3f}; rsync -a {wall:.3f} s wall, "
                f"{user:.3f} user + {system:.3f} system CPU-s"
            )
        for phase, values in phases.items():
            results[f"cpu_s_{phase}"] = round(median(values), 3)
        state_runs = [sum(phases[p][i] for p in STATE) for i in range(args.runs)]
        state_s, rsync_s = median(state_runs), median(rsync_cpus)
        results.update(
            {
                "cpu_s_state": round(state_s, 3),
                "cpu_s_state_runs": [round(s, 3) for s in state_runs],
                "state_us_per_file": round(state_s / args.files * 1e6, 1),
                "rsync_cpu_s": round(rsync_s, 3),
                "rsync_wall_s": round(median(rsync_walls), 3),
                "rsync_cpu_s_runs": [round(s, 3) for s in rsync_cpus],
                "rsync_user_cpu_s": round(median(rsync_users), 3),
                "state_cpu_ratio_to_rsync_cpu": round(state_s / rsync_s, 3) if rsync_s else None,
            }
        )
        console.print(
            f"per-file state: {state_s:.3f} CPU-s ({state_s / args.files * 1e6:.1f} µs a file) = "
            f"{state_s / rsync_s:.2f}x the CPU of the whole rsync -a ({rsync_s:.3f} CPU-s, of which "
            f"{median(rsync_users):.3f} user; its system time swings with the file system's state)"
        )
    finally:
        rmtree(work)
    emit_json(results)


if __name__ == "__main__":
    main()

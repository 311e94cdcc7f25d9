"""Directory deletes and renames on caches without bans (nginx, Squid): every path the job log
knows under the directory is purged, however many there are."""

from __future__ import annotations

import logging
import shutil

import pytest
from tests.component.purge.conftest import O1, O2, Harness

from relaysync.protocol.messages import LOST_OP, CommitRecord, CommitReport
from relaysync.purge import planner

pytestmark = pytest.mark.anyio

BOUND_S = 30.0  # an upper bound on eventual purges; quiet-host runs take 0.1-4 s (the variant sweep, under coverage and load: more)
MANY = 7  # paths under the directory: over twice the threshold below, not a multiple


def _record_writes(harness: Harness, paths: list[str]) -> None:
    records = tuple(
        CommitRecord(seq=900 + i, op="write", path=f"{harness.site.root}/{p}")
        for i, p in enumerate(paths)
    )
    harness.store.record_commit_reports(
        [
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=O1,
                watermark=0,
                records=records,
            )
        ]
    )


@pytest.fixture
def many_past_3(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """Lower the planner's MANY_PATHS_UNDER (10,000) to 3, to keep the test fast.

    The store once cut the paths under a prefix at 10,000 (`MAX_PATHS_UNDER`, gone since) and
    nginx and Squid kept serving the rest; what is left of that bound is the planner's: a prefix
    with more known paths is logged, and must still be purged whole. The test asserts the log
    line (`_went_past`): the directory did go past the bound (10,001 paths through the store:
    unit/purge/test_purger_plan.py).
    """
    monkeypatch.setattr(planner, "MANY_PATHS_UNDER", 3)
    caplog.set_level(logging.INFO, logger=planner.__name__)
    return caplog


def _went_past(caplog: pytest.LogCaptureFixture, directory: str) -> bool:
    return f"{directory} has {MANY} known paths under it" in caplog.text


async def test_a_deleted_directory_is_purged_whole_past_the_cap(
    harness: Harness, many_past_3: pytest.LogCaptureFixture
) -> None:
    paths = [f"big/p{i}.html" for i in range(MANY)]
    for path in paths:
        harness.write(path, path.encode())
    _record_writes(harness, paths)
    for path in paths:
        harness.warm(path)
    shutil.rmtree(harness.folder / "big")
    harness.commit("delete", "big")
    for path in paths:  # the last ones (in path order) were once cut: nginx and Squid kept them
        await harness.until_served(path, (404, None), timeout_s=BOUND_S)
    assert _went_past(many_past_3, "big")


async def test_a_renamed_directory_is_purged_whole_past_the_cap(
    harness: Harness, many_past_3: pytest.LogCaptureFixture
) -> None:
    paths = [f"old/p{i}.html" for i in range(MANY)]
    for path in paths:
        harness.write(path, path.encode())
    _record_writes(harness, paths)
    for path in paths:
        harness.warm(path)
        harness.warm(path.replace("old/", "new/", 1))  # the 404 of the new name is cached too
    (harness.folder / "old").rename(harness.folder / "new")
    harness.commit("rename", "old", new_path="new")
    for path in paths:
        await harness.until_served(path, (404, None), timeout_s=BOUND_S)
        await harness.until_served(
            path.replace("old/", "new/", 1), (200, path.encode()), timeout_s=BOUND_S
        )
    assert _went_past(many_past_3, "old")


def _commit_removal(harness: Harness, op: str, path: str, removed: list[str]) -> None:
    """Report on both origins an op that removed `removed` under `path` (site-relative)."""
    root = harness.site.root
    seq = 0 if op == "erase" else next(harness.seqs)
    record = CommitRecord(
        seq=seq,
        op=op,
        path=f"{root}/{path}" if path else root,
        kind="d",
        removed=tuple(f"{root}/{p}" for p in removed),
    )
    for target in (O1, O2):
        harness.purger.on_commit_report(
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=target,
                watermark=seq,
                records=(record,),
            )
        )


async def test_a_deleted_directory_the_job_log_does_not_know_is_purged_as_the_origins_say(
    harness: Harness,
) -> None:
    """Files that reached the origins by a rename or a comparison have no job log row under the
    directory: nginx and Squid kept them until the origins said what they removed."""
    paths = [f"gone/p{i}.html" for i in range(3)] + ["gone/sub/index.html"]
    for path in paths:
        harness.write(path, path.encode())
        harness.warm(path)
    harness.warm("gone/sub/")
    shutil.rmtree(harness.folder / "gone")
    _commit_removal(harness, "delete", "gone", paths)
    for path in [*paths, "gone/sub/"]:
        await harness.until_served(path, (404, None), timeout_s=BOUND_S)


async def test_what_a_comparison_erased_is_purged(harness: Harness) -> None:
    harness.write("kept.html", b"kept")
    harness.write("stray/x.html", b"stray")
    for path in ("kept.html", "stray/x.html"):
        harness.warm(path)
    shutil.rmtree(harness.folder / "stray")
    _commit_removal(harness, "erase", "", ["stray/x.html"])
    await harness.until_served("stray/x.html", (404, None), timeout_s=BOUND_S)
    assert {harness.get(kind, "kept.html") for kind in harness.farm.caches} == {(200, b"kept")}


async def test_a_marker_of_lost_reports_purges_the_whole_site_on_every_cache(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """An origin dropped commit reports past its queue's bound while the master was away
    (agent/_lost_reports.py): its marker (op "lost", seq 0, the mapping's root) purges the site
    whole, a ban on Varnish and every known path on nginx and Squid (the site's root is a folder
    of the mapping's). Before, the changes those reports named were never purged."""
    paths = ["a.html", "sub/b.html"]
    for path in paths:
        harness.write(path, b"old")
    _record_writes(harness, paths)
    for path in paths:
        harness.warm(path)
    for path in paths:
        harness.write(path, b"new")  # committed on the origins; the reports of it were dropped
    marker = CommitRecord(seq=0, op=LOST_OP, path="")
    harness.purger.on_commit_report(
        CommitReport(
            mapping_id=harness.mapping_id,
            source_node="a" * 64,
            target_node=O1,
            watermark=0,
            records=(marker,),
        )
    )
    for path in paths:
        await harness.until_served(path, (200, b"new"), timeout_s=BOUND_S)
    assert "origin dropped commit reports" in caplog.text

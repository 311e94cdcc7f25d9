"""Directory deletes and renames on caches without bans (nginx, Squid): every path the job log
knows under the directory is purged, however many there are."""

from __future__ import annotations

import shutil

import pytest
from tests.component.purge.conftest import O1, Harness

from relaysync.master.store import _sites
from relaysync.protocol.messages import CommitRecord, CommitReport

pytestmark = pytest.mark.anyio

BOUND_S = 5.0
MANY = 7  # paths under the directory: over two store reads of the cap below, not a multiple


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
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The store read at most MAX_PATHS_UNDER (10,000) paths under a prefix and the rest went
    # unpurged; 3 keeps the test fast. It reads them all now (raising=False: the cap is gone).
    monkeypatch.setattr(_sites, "MAX_PATHS_UNDER", 3, raising=False)


async def test_a_deleted_directory_is_purged_whole_past_the_cap(
    harness: Harness, small_cap: None
) -> None:
    paths = [f"big/p{i}.html" for i in range(MANY)]
    for path in paths:
        harness.write(path, path.encode())
    _record_writes(harness, paths)
    for path in paths:
        harness.warm(path)
    shutil.rmtree(harness.folder / "big")
    harness.commit("delete", "big")
    for path in paths:  # the last ones (in path order) were cut: nginx and Squid kept them
        await harness.until_served(path, (404, None), timeout_s=BOUND_S)


async def test_a_renamed_directory_is_purged_whole_past_the_cap(
    harness: Harness, small_cap: None
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

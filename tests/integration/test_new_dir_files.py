"""Files written into a new directory reach the targets without the hot-file hold: a real
fleet whose source agent holds a hot file for an hour (RELAYSYNC_HOT_FILE_S), so a file found
by the scan of a new directory arrives within the test's bound only if the read-lease probe
told it complete (`_util/lease.py closed_as_scanned`); and a file still open for writing
there is held until its close, then sent once, whole.

Found in review (notes/s24/watch-review.md #5): `mkdir d && cp f d/` reached targets only after
1.0-1.5 s (held as maybe still being written). A first probe sent empty versions of files just
created (notes/s24/note.md); every version the targets committed is checked here (job log).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

HOLD_FOREVER_S = "3600"  # the source's hot-file hold: far longer than any wait here


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(
        tmp_path_factory.mktemp("fleet"), extra_env={"RELAYSYNC_HOT_FILE_S": HOLD_FOREVER_S}
    )
    try:
        yield f
    finally:
        f.cluster.stop()


def _committed_rows(fleet: Fleet, mapping: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The job log of `mapping` once it holds at least `count` rows, all committed on both
    targets."""

    def logged() -> list[dict[str, Any]]:
        rows = fleet.cluster.api.get(
            "/api/jobs", params={"mapping": mapping["id"], "limit": 1000}
        ).json()
        done = len(rows) >= count and all(r["committed_targets"] == 2 for r in rows)
        return rows if done else []

    return list(wait_until(logged, timeout_s=CONVERGE_TIMEOUT_S, what=f"{count} job log rows"))


def _written_tree(src: Path) -> dict[str, int]:
    """200 non-empty files in 10 new directory trees, three levels deep, each written and
    closed at once after its directory was made (as `cp -r`, `tar x`): path -> size."""
    sizes: dict[str, int] = {}
    for top in range(10):
        levels = [f"r{top}", f"r{top}/a", f"r{top}/a/b", f"r{top}/a/b/c"]
        os.makedirs(src / levels[-1])
        for i in range(20):
            rel = f"{levels[i % 4]}/{i}.html"
            data = os.urandom(1 + (top * 20 + i) * 7)
            (src / rel).write_bytes(data)
            sizes[rel] = len(data)
    return sizes


def test_files_written_into_new_directories_arrive_without_the_hold(fleet: Fleet) -> None:
    mapping, src, dsts = fleet.new_mapping()
    sizes = _written_tree(src)
    fleet.wait_converged(src, dsts)  # with the hold (an hour), only through the probe
    rows = _committed_rows(fleet, mapping, len(sizes) + 40)  # and 40 directories
    files = [r for r in rows if r["op"] == "write"]
    assert sorted((r["path"], r["size"]) for r in files) == sorted(sizes.items())  # once, whole


def test_a_file_open_for_writing_in_a_new_directory_is_held_until_closed(fleet: Fleet) -> None:
    mapping, src, dsts = fleet.new_mapping()
    first, rest = os.urandom(50_000), os.urandom(70_000)
    (src / "n" / "m").mkdir(parents=True)
    with open(src / "n" / "m" / "open.bin", "wb") as writer:
        writer.write(first)
        writer.flush()
        (src / "n" / "m" / "marker.txt").write_text("after open.bin was found")
        wait_until(
            lambda: all((d / "n" / "m" / "marker.txt").exists() for d in dsts),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="the marker on the targets",
        )
        writer.write(rest)
    fleet.wait_converged(src, dsts)
    rows = _committed_rows(fleet, mapping, 4)  # n, n/m, the marker, open.bin
    versions = [r["size"] for r in rows if r["path"] == "n/m/open.bin"]
    assert versions == [len(first) + len(rest)]  # never the part written before the close

"""A damaged segment kept for the operator never replaces one kept before (review T, 5: the spool
and the outbox number segments afresh once none is left, and a later bad segment's `.bad`
replaced the earlier one's)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from relaysync._util.kept_aside import MAX_KEPT_FILES, keep_aside


def test_a_second_damaged_file_of_one_name_is_kept_beside_the_first(tmp_path: Path) -> None:
    segment = tmp_path / "0000000000000000.outbox"
    for n in range(3):
        segment.write_bytes(f"damaged {n}".encode())
        keep_aside(segment)
    kept = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert kept == {
        "0000000000000000.outbox.bad": "damaged 0",
        "0000000000000000.outbox.2.bad": "damaged 1",
        "0000000000000000.outbox.3.bad": "damaged 2",
    }


def test_no_more_than_max_kept_files_are_kept_the_oldest_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that keeps damaging segments does not fill the directory with them (before: every
    `.bad` was kept for ever). Other files are not touched."""
    (tmp_path / "0000000000000007.outbox").write_bytes(b"live segment")
    for n in range(MAX_KEPT_FILES + 2):
        segment = tmp_path / f"{n:016d}.spool"
        segment.write_bytes(f"damaged {n}".encode())
        os.utime(segment, ns=(n * 10**9, n * 10**9))  # the order they were damaged in
        with caplog.at_level(logging.WARNING):
            keep_aside(segment)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".bad"))
    assert kept == [f"{n:016d}.spool.bad" for n in range(2, MAX_KEPT_FILES + 2)]
    assert (tmp_path / "0000000000000007.outbox").read_bytes() == b"live segment"
    assert "removed 1 older damaged files kept aside" in caplog.text

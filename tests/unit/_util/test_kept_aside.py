"""A damaged segment kept for the operator never replaces one kept before (review T, 5: the spool
and the outbox number segments afresh once none is left, and a later bad segment's `.bad`
replaced the earlier one's)."""

from __future__ import annotations

from pathlib import Path

from relaysync._util.kept_aside import keep_aside


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

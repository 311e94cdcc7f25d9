"""A seq names a change only within its mapping and its source's journal: a recreated journal
(seqs from 1 again) or a site re-pointed to another mapping of the same source reuses seqs, and
the change they now name must still be purged (purge/ordering.py)."""

from __future__ import annotations

import anyio
import pytest
from tests.component.purge.conftest import O1, O2, SOURCE, Harness

from relaysync.protocol.messages import CommitRecord, CommitReport

pytestmark = pytest.mark.anyio

BOUND_S = 15.0  # every cache serves the new bytes within this after the origins commit


def _commit(h: Harness, mapping_id: int, journal_id: str, rel: str, seq: int) -> None:
    """Report `rel` written at `seq` of `journal_id`, committed on both origins."""
    record = CommitRecord(seq=seq, op="write", path=f"{h.site.root}/{rel}")
    for target in (O1, O2):
        h.purger.on_commit_report(
            CommitReport(
                mapping_id=mapping_id,
                source_node=SOURCE,
                target_node=target,
                watermark=seq,
                records=(record,),
                journal_id=journal_id,
            )
        )


async def _changed_and_purged(
    h: Harness, mapping_id: int, journal_id: str, rel: str, seq: int
) -> None:
    h.write(rel, b"v1")
    h.warm(rel)
    h.write(rel, b"v2")
    assert h.get("nginx", rel) == (200, b"v1")  # the caches hold the old bytes
    _commit(h, mapping_id, journal_id, rel, seq)
    await h.until_served(rel, (200, b"v2"), timeout_s=BOUND_S)


async def test_a_recreated_journals_change_at_a_seq_used_before_is_purged(h: Harness) -> None:
    await _changed_and_purged(h, h.mapping_id, "journal-1", "a.txt", 1)
    # the source's journal is recreated: its first change is seq 1 again
    await _changed_and_purged(h, h.mapping_id, "journal-2", "b.txt", 1)


async def test_a_site_moved_to_another_mapping_of_its_source_purges_its_seqs(h: Harness) -> None:
    await _changed_and_purged(h, h.mapping_id, "journal-1", "a.txt", 1)
    other = h.store.create_mapping(
        name=f"{h.site.name}-other",
        source="src",
        source_path="/src2",
        targets=[("o1", "/u1"), ("o2", "/u2")],
    )
    h.store.update_site(h.site.name, mapping=other.id)
    await anyio.to_thread.run_sync(h.purger.reload_sites)
    # the other mapping's first change is seq 1 too, from the same source
    await _changed_and_purged(h, other.id, "journal-9", "b.txt", 1)


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness

"""The work loop's pass over the purge queue: due items are filed by cache and by (URL, action)
with one lookup each. The pass compared each item with every group filed before it: 600
queued refreshes cost 2.5 ms a pass (30 ms under coverage), and a burst of N items N passes,
so the event loop was taken from the requests in flight until they ran out of time."""

from __future__ import annotations

import pytest

from relaysync.purge.jobs import PurgeItem, QueuedPurge
from relaysync.purge.purger import Purger

pytestmark = pytest.mark.anyio

N = 3_000


class CountedUrl(str):
    """A URL that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedUrl.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


async def test_a_pass_files_each_due_item_with_one_lookup(store: object) -> None:
    purger = Purger(store)  # type: ignore[arg-type]
    queued = [
        QueuedPurge(
            id=i,
            item=PurgeItem(site_id=1, cache="nginx", url=CountedUrl(f"http://h/d/f{i % (N // 2)}")),
            attempts=0,
            next_at=0.0,
        )
        for i in range(N)
    ]
    due: dict[str, dict[tuple[tuple[int, str, str], str], list[QueuedPurge]]] = {}
    CountedUrl.compared = 0
    for q in queued:
        purger._add_due(due, (q.item.site_id, q.item.cache, q.item.url), q)
    assert CountedUrl.compared <= 2 * N  # the old pass: N * N / 4 = 2,250,000 here
    groups = due["1/nginx"]  # no such site: the gate is keyed by site and cache
    assert len(groups) == N // 2  # each URL's two items in one group, in queue order
    assert [q.id for q in groups[((1, "nginx", "http://h/d/f0"), "refresh")]] == [0, N // 2]

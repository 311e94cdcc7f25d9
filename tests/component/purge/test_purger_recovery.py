"""The purger keeps going: a store hiccup while planning, a cache that ignores the one-request
refresh, an unexpected error in a worker."""

from __future__ import annotations

import anyio
import pytest
from tests.component.purge.conftest import O1, Harness

from relaysync.errors import StoreError
from relaysync.protocol.messages import CommitRecord, CommitReport

pytestmark = pytest.mark.anyio

BOUND_S = 5.0


async def test_a_store_error_while_planning_is_retried(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory delete needs the paths under it (nginx and Squid take no bans); the first
    read fails. The purger must live on, and the delete must still be purged."""
    harness.write("old/a.css", b"old")
    harness.store.record_commit_reports(
        [
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=O1,
                watermark=0,
                records=(CommitRecord(seq=900, op="write", path=f"{harness.site.root}/old/a.css"),),
            )
        ]
    )
    harness.warm("old/a.css")
    real = harness.store.changed_paths_under
    calls: list[str] = []

    def flaky(mapping_id: int, prefix: str) -> list[str]:
        calls.append(prefix)
        if len(calls) == 1:
            raise StoreError("database is locked")  # an SQLite busy timeout
        return real(mapping_id, prefix)

    monkeypatch.setattr(harness.store, "changed_paths_under", flaky)
    (harness.folder / "old/a.css").unlink()
    harness.commit("delete", "old")
    harness.write("b.html", b"new")
    harness.warm("b.html")  # cached as it is now; the next write must be refreshed
    harness.write("b.html", b"newer")
    harness.commit("write", "b.html")
    await harness.until_served("old/a.css", (404, None), timeout_s=BOUND_S)
    await harness.until_served("b.html", (200, b"newer"), timeout_s=BOUND_S)
    assert len(calls) >= 2


async def test_an_unexpected_error_in_a_worker_is_retried_and_reported(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaysync.purge import worker as worker_module

    notes: list[tuple[str, dict[str, object]]] = []
    harness.purger.notify = lambda kind, data: notes.append((kind, data))
    real = worker_module.run_item
    calls: list[str] = []

    async def buggy(*args: object, **kwargs: object) -> tuple[str, bool | None]:
        calls.append("x")
        if len(calls) == 1:
            raise KeyError("a bug")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker_module, "run_item", buggy)
    harness.write("bug.txt", b"one")
    harness.warm("bug.txt")
    harness.write("bug.txt", b"two")
    harness.commit("write", "bug.txt")
    await harness.until_served("bug.txt", (200, b"two"), timeout_s=BOUND_S)
    assert [kind for kind, _ in notes] == ["purger_failing"]


async def test_a_refresh_that_the_cache_ignores_falls_back_to_purge(harness: Harness) -> None:
    """Varnish ignores a client's `Cache-Control: no-cache`, as Squid does with ignore-reload
    or reload_into_ims: with the Squid driver's one-request refresh it answers 200 from its old
    copy. The purger must notice at the confirm, PURGE + GET, and keep to that once it has
    seen it STALE_REFRESHES_TO_SWITCH times (once may be a confirm racing the cache)."""
    varnish = harness.farm.caches["varnish"]
    harness.store.update_site(
        harness.site.id,
        caches=[
            {
                "name": "ignores-reload",
                "driver": "squid",
                "address": varnish.address,
                # one variant, as the Squid this Varnish stands for would hold for one client:
                # Varnish folds Accept-Encoding into two variants of its own
                "accept_encodings": ["gzip"],
            }
        ],
    )
    harness.purger.reload_sites()
    harness.write("ims.txt", b"one")
    harness.get("varnish", "ims.txt")
    for body in (b"two", b"three", b"four"):
        harness.write("ims.txt", body)
        assert harness.get("varnish", "ims.txt") != (200, body)
        harness.commit("write", "ims.txt")
        with anyio.fail_after(BOUND_S):
            while harness.get("varnish", "ims.txt") != (200, body):
                await anyio.sleep(0.02)
    # Wait for the switch itself, not for a count of results: a round's item for the second
    # host may still be backing off when the next write comes, and then both go as one item
    # (two hosts, three rounds make 4 to 6 results, each a stale refresh, so at least 3).
    site = harness.purger.site_by_name(harness.site.name)
    assert site is not None
    with anyio.fail_after(BOUND_S):
        while harness.purger._driver(site, site.caches[0]).one_request:
            await anyio.sleep(0.02)
    confirmed = [r for r in harness.results if r.item.url.endswith("/ims.txt") and r.confirmed]
    assert len(confirmed) >= 3

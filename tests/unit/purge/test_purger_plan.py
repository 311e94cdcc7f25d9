"""Purge planning without caches: which items a change or a prefix queues, and what is refused."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest

from relaysync.errors import PrefixNotExpandable
from relaysync.master.store import Store
from relaysync.protocol.messages import LOST_OP, CommitRecord, CommitReport
from relaysync.purge.ordering import Released
from relaysync.purge.planner import url_items
from relaysync.purge.purger import Purger
from relaysync.purge.site import SiteSpec
from tests.unit.purge.conftest import O1, SOURCE

pytestmark = pytest.mark.anyio


def _site(store: Store, mapping: int | None, driver: str) -> SiteSpec:
    return store.create_site(
        name=f"s-{driver}-{mapping}",
        provider="acme",
        mapping=mapping,
        root="",
        base_urls=["http://www.example.com"],
        path_prefix="/",
        caches=[{"name": "c1", "driver": driver, "address": "127.0.0.1:9"}],
        origins=[{"server": "o1"}] if mapping else [],
    )


@pytest.fixture
def mapping(store: Store) -> int:
    mapping = store.create_mapping(
        name="m", source="src", source_path="/src", targets=[("o1", "/t1")]
    )
    store.record_commit_reports(
        [
            CommitReport(
                mapping_id=mapping.id,
                source_node=SOURCE,
                target_node=O1,
                watermark=2,
                records=(
                    CommitRecord(seq=1, op="write", path="a.html"),
                    CommitRecord(seq=2, op="write", path="sub/b.html"),
                ),
            )
        ]
    )
    return mapping.id


async def test_prefix_of_a_subdirectory(store: Store, mapping: int) -> None:
    assert await Purger(store).submit_prefix(_site(store, mapping, "nginx"), "sub") == 1


@pytest.mark.parametrize("prefix", ["", "/"])
async def test_prefix_of_the_whole_site_is_every_known_path(
    store: Store, mapping: int, prefix: str
) -> None:
    """The site's root is the mapping's root: the prefix is empty (it was LIKE '/%')."""
    assert store.changed_paths_under(mapping, prefix) == ["a.html", "sub/b.html"]
    site = _site(store, mapping, "squid")
    assert await Purger(store).submit_prefix(site, prefix.strip("/")) == 2


async def test_a_prefix_is_expanded_to_every_known_path_past_ten_thousand(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The store gave at most 10,000 paths under a prefix; nginx and Squid kept the rest."""
    mapping = store.create_mapping(
        name="big", source="src", source_path="/big", targets=[("o1", "/big1")]
    )
    paths = [f"big/p{i:05}.html" for i in range(10_001)]
    store.record_commit_reports(
        [
            CommitReport(
                mapping_id=mapping.id,
                source_node=SOURCE,
                target_node=O1,
                watermark=0,
                records=tuple(
                    CommitRecord(seq=i + 1, op="write", path=p) for i, p in enumerate(paths)
                ),
            )
        ]
    )
    assert store.changed_paths_under(mapping.id, "big") == paths
    caplog.set_level(logging.INFO, logger="relaysync.purge.planner")
    assert await Purger(store).submit_prefix(_site(store, mapping.id, "nginx"), "big") == len(paths)
    assert f"has {len(paths)} known paths under it" in caplog.text


@pytest.mark.parametrize("driver", ["nginx", "squid", "http"])
async def test_prefix_on_a_listener_only_site_without_bans_is_refused(
    store: Store, driver: str
) -> None:
    site = _site(store, None, driver)
    with pytest.raises(PrefixNotExpandable, match="send each URL instead"):
        await Purger(store).submit_prefix(site, "docs")
    assert store.queued_purges() == 0


async def test_prefix_on_a_listener_only_site_with_bans_is_a_ban(store: Store) -> None:
    site = _site(store, None, "varnish")
    assert await Purger(store).submit_prefix(site, "docs") == 1
    [queued] = store.pending_purges()
    assert (queued.item.action, queued.item.url) == ("ban", "http://www.example.com/docs/")


def test_other_url_forms_are_purged_alongside() -> None:
    items = url_items(1, "c1", ["http://h/a%20(1).jpg", "http://h/b.jpg"], "refresh")
    assert [(i.action, i.url) for i in items] == [
        ("refresh", "http://h/a%20(1).jpg"),
        ("purge", "http://h/a%20%281%29.jpg"),
        ("refresh", "http://h/b.jpg"),
    ]
    assert [i.action for i in url_items(1, "c1", ["http://h/(d)/"], "ban")] == ["ban", "ban"]


# --- what the origins reported removed (CommitRecord.kind / removed) ---

URL = "http://www.example.com/"
_names = itertools.count(1)


async def _planned(
    store: Store, mapping: int, driver: str, change: Released, *, variants: bool = False
) -> set[tuple]:
    """The items of `change` on a site with one cache of `driver`; with `variants`, the site
    turns query_variants on (off by default)."""
    site = store.create_site(
        name=f"r{next(_names)}",
        provider="acme",
        mapping=mapping,
        root="",
        base_urls=[URL.rstrip("/")],
        caches=[{"name": "c1", "driver": driver, "address": "127.0.0.1:9"}],
        origins=[{"server": "o1"}],
        query_variants=True if variants else None,
    )
    items = await Purger(store)._plan(site, dataclasses.replace(change, site_id=site.id))
    return {(i.action, i.url.removeprefix(URL)) for i in items}


@pytest.mark.parametrize("kind", ["f", "l"])
async def test_a_file_or_link_delete_bans_no_prefix(store: Store, mapping: int, kind: str) -> None:
    """Each file delete was also a ban of /a.html/ (two with the strict form): Varnish's ban
    list grew by the deletes, and nginx and Squid purged what the job log knew under a file.
    (With query_variants on, Varnish bans the file's query-string variants `sub?`, not what
    lies under it.)"""
    change = Released(0, "delete", "sub", kind=kind)
    assert await _planned(store, mapping, "varnish", change) == {("purge", "sub")}
    assert await _planned(store, mapping, "varnish", change, variants=True) == {
        ("purge", "sub"),
        ("ban", "sub?"),
    }
    assert await _planned(store, mapping, "nginx", change) == {("purge", "sub")}


async def test_a_directory_delete_purges_what_the_origins_removed_and_the_job_log_knows(
    store: Store, mapping: int
) -> None:
    change = Released(0, "delete", "sub", kind="d", removed=("sub/new.html", "elsewhere.html"))
    assert await _planned(store, mapping, "nginx", change) == {
        ("purge", "sub"),
        ("purge", "sub/b.html"),  # the job log's
        ("purge", "sub/new.html"),  # the origin's (not under sub/: ignored)
    }
    assert await _planned(store, mapping, "varnish", change) == {("purge", "sub"), ("ban", "sub/")}


async def test_a_delete_of_unknown_kind_is_planned_as_a_directory(
    store: Store, mapping: int
) -> None:
    """An older agent says nothing of what it removed: ban, and the job log's paths."""
    change = Released(0, "delete", "sub")
    assert await _planned(store, mapping, "varnish", change) == {("purge", "sub"), ("ban", "sub/")}
    assert await _planned(store, mapping, "varnish", change, variants=True) == {
        ("purge", "sub"),
        ("ban", "sub/"),
        ("ban", "sub?"),  # a file after all: its query-string variants
    }
    assert await _planned(store, mapping, "squid", change) == {
        ("purge", "sub"),
        ("purge", "sub/b.html"),
    }


async def test_a_directory_rename_purges_the_moved_files_under_both_names(
    store: Store, mapping: int
) -> None:
    change = Released(0, "rename", "sub", "new", kind="d", removed=("sub/moved.html",))
    assert await _planned(store, mapping, "nginx", change) == {
        ("purge", "sub"),
        ("refresh", "new"),
        ("purge", "sub/b.html"),
        ("purge", "sub/moved.html"),
        ("purge", "new/b.html"),
        ("purge", "new/moved.html"),
    }
    file = Released(0, "rename", "a.html", "b.html", kind="f")
    assert await _planned(store, mapping, "varnish", file) == {
        ("purge", "a.html"),
        ("refresh", "b.html"),
    }
    assert await _planned(store, mapping, "varnish", file, variants=True) == {
        ("purge", "a.html"),
        ("refresh", "b.html"),
        ("ban", "a.html?"),
        ("ban", "b.html?"),  # the new name's variants may be cached 404s
    }


async def test_an_erase_purges_what_was_removed_and_bans_only_a_cut_list(
    store: Store, mapping: int, caplog: pytest.LogCaptureFixture
) -> None:
    """An erase (catch-up) was not purged at all: what it removed stayed cached everywhere."""
    change = Released(0, "erase", "sub", kind="d", removed=("sub/stray.html",))
    for driver in ("varnish", "nginx"):
        assert await _planned(store, mapping, driver, change) == {("purge", "sub/stray.html")}
    assert await _planned(store, mapping, "varnish", change, variants=True) == {
        ("purge", "sub/stray.html"),
        ("ban", "sub/stray.html?"),
    }
    cut = dataclasses.replace(change, removed_truncated=True)
    caplog.set_level(logging.INFO, logger="relaysync.purge.planner")
    assert await _planned(store, mapping, "varnish", cut) == {
        ("purge", "sub/stray.html"),
        ("ban", "sub/"),
    }
    # the prefix ban reaches sub/stray.html?v=1: no variant ban besides (planner.prune_bans)
    assert await _planned(store, mapping, "varnish", cut, variants=True) == {
        ("purge", "sub/stray.html"),
        ("ban", "sub/"),
    }
    assert ("purge", "sub/b.html") in await _planned(store, mapping, "squid", cut)
    assert "listed only part of what it removed" in caplog.text


async def test_a_marker_of_lost_reports_purges_the_whole_site(
    store: Store, mapping: int, caplog: pytest.LogCaptureFixture
) -> None:
    """An origin dropped reports past its queue's bound (agent/_lost_reports.py): what they
    named is not known, so every cache of the site drops all of it (was: nothing purged, the
    caches kept the old versions of whatever those reports named)."""
    lost = Released(0, LOST_OP, "")
    assert await _planned(store, mapping, "varnish", lost) == {("ban", "")}
    assert await _planned(store, mapping, "squid", lost) >= {
        ("purge", "a.html"),
        ("purge", "sub/b.html"),
    }
    assert "origin dropped commit reports" in caplog.text

"""Directory listings: which listing pages a change alters, and what a batch of changes queues
for them on a site with `listings` (once per directory) and without (nothing)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import pytest

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.listings import changed_listings, gone_listings, listing_urls
from relaysync.purge.ordering import Released
from relaysync.purge.purger import Purger
from relaysync.purge.site import SiteSpec
from tests.unit.purge.conftest import O1, SOURCE

pytestmark = pytest.mark.anyio
URL = "http://www.example.com"
KINDS = ("varnish", "nginx", "squid")
_names = itertools.count(1)


def _site(
    store: Store,
    *,
    listings: bool,
    root: str = "",
    path_prefix: str = "/",
    mapping: int | None = None,
) -> SiteSpec:
    return store.create_site(
        name=f"s{next(_names)}",
        provider="acme",
        mapping=mapping,
        root=root,
        base_urls=[URL],
        path_prefix=path_prefix,
        listings=listings,
        query_variants=False,  # their bans on Varnish: tests/unit/purge/test_query_variants.py
        caches=[{"name": k, "driver": k, "address": "127.0.0.1:9"} for k in KINDS],
        origins=[{"server": "o1"}] if mapping is not None else [],
    )


def _mapping_with(store: Store, records: Sequence[tuple[str, str]]) -> int:
    """A mapping whose job log holds `records` (op, path), committed on its one origin."""
    mapping = store.create_mapping(
        name=f"m{next(_names)}", source="src", source_path="/src", targets=[("o1", "/t")]
    )
    rows = tuple(CommitRecord(seq=i, op=op, path=p) for i, (op, p) in enumerate(records, 1))
    report = CommitReport(
        mapping_id=mapping.id,
        source_node=SOURCE,
        target_node=O1,
        watermark=len(rows),
        records=rows,
    )
    store.record_commit_reports([report])
    return mapping.id


async def _queued(store: Store, site: SiteSpec, changes: Sequence[Released]) -> list[PurgeItem]:
    """Release `changes` to a purger as one batch; return the items its intake queued."""
    purger = Purger(store)
    purger.reload_sites()
    before = {q.id for q in store.pending_purges()}
    purger._released.extend(
        Released(site.id, c.op, c.path, c.new_path, kind=c.kind, removed=c.removed) for c in changes
    )
    await purger._intake()
    assert not purger._released
    return [q.item for q in store.pending_purges() if q.id not in before]


def _on(items: list[PurgeItem], cache: str) -> set[tuple[str, str]]:
    return {(i.action, i.url.removeprefix(URL)) for i in items if i.cache == cache}


@pytest.mark.parametrize(
    "change, dirs",
    [
        (Released(0, "write", "pub/a.tar.gz"), ["pub"]),  # new or rewritten: a record cannot tell
        (Released(0, "write", "top.html"), [""]),
        (Released(0, "symlink", "pub/latest"), ["pub"]),
        (Released(0, "attr", "pub/a.tar.gz"), ["pub"]),  # the listing shows the mtime
        (Released(0, "delete", "pub/a/b"), ["pub/a"]),
        (Released(0, "mkdir", "pub/2026"), ["pub", "pub/2026"]),  # its own: a cached 404
        (Released(0, "rename", "in/r.iso", "pub/r.iso"), ["in", "pub"]),
        (Released(0, "erase", "pub"), ["pub"]),
        (Released(0, "prefix", "pub"), []),  # an operator's purge of a prefix: no name changed
    ],
)
def test_the_listings_a_change_alters(change: Released, dirs: list[str]) -> None:
    assert changed_listings(change) == dirs


def test_the_listings_a_removal_takes_away() -> None:
    paths = ["d/x", "d/a/y", "d/a/b/z", "d/a/b/w", "dx/no", "elsewhere"]
    assert gone_listings("d", paths) == ["d", "d/a", "d/a/b"]
    assert gone_listings("d", paths, itself=False) == ["d/a", "d/a/b"]
    assert gone_listings("", ["a/b/c", "d"]) == ["", "a/b", "a"]
    made = ["d/a", "d/empty"]  # the job log's mkdirs: an empty directory is named by no path
    assert gone_listings("d", paths, dirs_made=made) == ["d", "d/a", "d/a/b", "d/empty"]


def test_listing_urls_honour_the_root_and_the_path_prefix(store: Store) -> None:
    site = _site(store, listings=True, root="www", path_prefix="/static/")
    assert listing_urls(site, ["www/pub", "www", "other", ""]) == [
        f"{URL}/static/pub/",
        f"{URL}/static/",  # the site root; the mapping's root and other folders are not served
    ]
    spaced = listing_urls(site, ["www/my files"])
    assert spaced == [f"{URL}/static/my%20files/"]


async def test_a_thousand_new_files_in_one_directory_refresh_its_listing_once(
    store: Store,
) -> None:
    site = _site(store, listings=True)
    writes = [Released(0, "write", f"pub/f{i:04}.tar.gz") for i in range(1000)]
    items = await _queued(store, site, [*writes, Released(0, "write", "top.html")])
    for cache in KINDS:
        listing = Counter(i.url for i in items if i.cache == cache and i.url.endswith("/"))
        assert listing == {f"{URL}/pub/": 1, f"{URL}/": 1}, cache
        assert all(i.action == "refresh" for i in items if i.url.endswith("/"))
    assert len(items) == 3 * (1000 + 1 + 2)  # each file's own refresh, and the two listings


async def test_a_site_without_listings_queues_no_listing(store: Store) -> None:
    site = _site(store, listings=False)
    changes = [
        Released(0, "write", "pub/new.tar.gz"),
        Released(0, "mkdir", "pub/2026"),
        Released(0, "delete", "pub/old", kind="d", removed=("pub/old/sub/x",)),
        Released(0, "rename", "in/r.iso", "pub/r.iso", kind="f"),
        Released(0, "erase", "pub", kind="d", removed=("pub/stray/y",)),
    ]
    items = await _queued(store, site, changes)
    assert not [i for i in items if i.url.endswith("/") and i.action != "ban"], items
    assert _on(items, "nginx") == {
        ("refresh", "/pub/new.tar.gz"),
        ("purge", "/pub/old"),
        ("purge", "/pub/old/sub/x"),
        ("purge", "/in/r.iso"),
        ("refresh", "/pub/r.iso"),
        ("purge", "/pub/stray/y"),
    }


async def test_a_rename_refreshes_both_directories_listings(store: Store) -> None:
    site = _site(store, listings=True)
    items = await _queued(store, site, [Released(0, "rename", "in/r.iso", "pub/r.iso", kind="f")])
    for cache in KINDS:
        assert _on(items, cache) == {
            ("purge", "/in/r.iso"),
            ("refresh", "/pub/r.iso"),
            ("refresh", "/in/"),
            ("refresh", "/pub/"),
        }


async def test_a_deleted_directorys_listings_are_purged_where_no_ban_takes_them(
    store: Store,
) -> None:
    site = _site(store, listings=True)
    removed = ("pub/old/x", "pub/old/sub/y")
    items = await _queued(
        store, site, [Released(0, "delete", "pub/old", kind="d", removed=removed)]
    )
    assert _on(items, "varnish") == {
        ("purge", "/pub/old"),
        ("ban", "/pub/old/"),  # takes its listing and those under it
        ("refresh", "/pub/"),
    }
    for cache in ("nginx", "squid"):
        assert _on(items, cache) == {
            ("purge", "/pub/old"),
            ("purge", "/pub/old/x"),
            ("purge", "/pub/old/sub/y"),
            ("purge", "/pub/old/"),
            ("purge", "/pub/old/sub/"),
            ("refresh", "/pub/"),
        }


async def test_an_erase_refreshes_its_listing_and_purges_those_it_removed(store: Store) -> None:
    site = _site(store, listings=True)
    change = Released(0, "erase", "pub", kind="d", removed=("pub/stray/y", "pub/z"))
    items = await _queued(store, site, [change])
    for cache in KINDS:
        assert _on(items, cache) == {
            ("purge", "/pub/stray/y"),
            ("purge", "/pub/z"),
            ("purge", "/pub/stray/"),
            ("refresh", "/pub/"),
        }


@pytest.mark.parametrize(
    "change, gone",
    [
        (Released(0, "delete", "pub/old", kind="d", removed=("pub/old/x",)), set()),
        (
            Released(0, "rename", "pub/old", "pub/new", kind="d", removed=("pub/old/x",)),
            {("purge", "/pub/new/empty/")},  # a 404 at the new name may be cached as well
        ),
    ],
    ids=["delete", "rename"],
)
async def test_an_empty_subdirectorys_listing_goes_with_its_directory_where_no_ban_takes_it(
    store: Store, change: Released, gone: set[tuple[str, str]]
) -> None:
    """The listings purged under a deleted or renamed directory were only those of directories
    that a file path names, and the origins report files and links only: on nginx and Squid the
    listing of an empty subdirectory (`/pub/old/empty/`) stayed cached, although the purger
    itself had refreshed it at its mkdir. The job log's mkdir rows name such directories."""
    mapping = _mapping_with(store, [("write", "pub/old/x"), ("mkdir", "pub/old/empty")])
    site = _site(store, listings=True, mapping=mapping)
    warmed = await _queued(store, site, [Released(0, "mkdir", "pub/old/empty")])
    assert ("refresh", "/pub/old/empty/") in _on(warmed, "nginx")
    items = await _queued(store, site, [change])
    assert ("ban", "/pub/old/") in _on(items, "varnish")  # takes the empty one's listing too
    assert not [i for i in items if i.cache == "varnish" and i.url.endswith("/empty/")]
    for cache in ("nginx", "squid"):
        expected = {("purge", "/pub/old/"), ("purge", "/pub/old/empty/"), *gone}
        assert expected <= _on(items, cache), cache


async def test_an_erase_purges_the_listing_of_an_empty_directory_it_removed(
    store: Store,
) -> None:
    """An erase purged the listings of the directories its reported files name, and the origins
    report files and links only: an empty directory it removed (`pub/stray`, made by a mkdir the
    purger refreshed) kept its listing cached, on every cache (an erase bans nothing unless its
    list was cut). The directories the job log made under the erased one are purged now."""
    mapping = _mapping_with(store, [("mkdir", "pub/stray"), ("write", "pub/keep.txt")])
    site = _site(store, listings=True, mapping=mapping)
    items = await _queued(store, site, [Released(0, "erase", "pub", kind="d", removed=("pub/z",))])
    for cache in KINDS:
        assert _on(items, cache) == {
            ("purge", "/pub/z"),
            ("purge", "/pub/stray/"),
            ("refresh", "/pub/"),  # its own listing stays: refreshed
        }, cache


async def test_an_index_file_write_refreshes_its_directory_once(store: Store) -> None:
    """A write of `pub/index.html` on a site with listings queued the refresh of `/pub/` twice
    in one batch, on every cache: once as the index file's directory URL, once as the listing."""
    site = _site(store, listings=True)
    items = await _queued(store, site, [Released(0, "write", "pub/index.html")])
    for cache in KINDS:
        urls = Counter((i.action, i.url) for i in items if i.cache == cache)
        assert urls == {("refresh", f"{URL}/pub/index.html"): 1, ("refresh", f"{URL}/pub/"): 1}


async def test_a_listing_purged_earlier_in_its_batch_is_still_refreshed(store: Store) -> None:
    """Only a refresh planned last makes the listing's own refresh redundant: after a delete of
    the index file purged `/pub/`, the listing that the web server now shows there is warmed."""
    site = _site(store, listings=True)
    items = await _queued(store, site, [Released(0, "delete", "pub/index.html", kind="f")])
    for cache in KINDS:
        assert [(i.action, i.url) for i in items if i.cache == cache] == [
            ("purge", f"{URL}/pub/index.html"),
            ("purge", f"{URL}/pub/"),
            ("refresh", f"{URL}/pub/"),  # after the purge: the queue runs a URL's items in order
        ], cache

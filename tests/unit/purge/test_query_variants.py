"""Query-string variants: a changed file's `/a.css?v=3` copies are banned on caches that take
bans (`/a.css?`, never `/a.css.map`) when the site turns `query_variants` on (opt-in: null and
false are off); a site that asks for them on caches that cannot purge by prefix is warned."""

from __future__ import annotations

import itertools

import pytest

from relaysync.master.store import Store
from relaysync.purge.drivers import DRIVERS
from relaysync.purge.ordering import Released
from relaysync.purge.purger import Purger
from relaysync.purge.site import BAN_DRIVERS, SiteSpec
from relaysync.purge.urls import parse_url, query_variant_prefixes

pytestmark = pytest.mark.anyio
KINDS = ("varnish", "nginx", "squid", "http")
_names = itertools.count(1)


def _site(store: Store, **extra: object) -> SiteSpec:
    return store.create_site(
        name=f"q{next(_names)}",
        provider="acme",
        mapping=None,
        base_urls=["http://www.example.com"],
        caches=[{"name": k, "driver": k, "address": "127.0.0.1:9"} for k in KINDS],
        origins=[{"url": "http://127.0.0.1:8"}],  # confirmed: no warning of its own
        **extra,
    )


async def _bans(store: Store, site: SiteSpec, change: Released) -> dict[str, list[str]]:
    items = await Purger(store)._plan(site, change)
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    for i in items:
        if i.action == "ban":
            out[i.cache].append(i.url.removeprefix("http://www.example.com"))
    return out


def test_the_ban_prefix_keeps_its_question_mark() -> None:
    """Without the `?`, BAN /a.css would be the regex ^/a\\.css: /a.css.map and /a.css itself."""
    assert parse_url("http://h/a.css?").target == "/a.css?"
    assert parse_url("http://h/a.css").target == "/a.css"
    assert parse_url("http://h/a.css?v=1").target == "/a.css?v=1"
    assert query_variant_prefixes("http://h/a%20(1).css") == [
        "http://h/a%20(1).css?",
        "http://h/a%20%281%29.css?",  # the strict form a normalising client sends
    ]


def test_ban_drivers_are_those_that_can_ban() -> None:
    assert {name for name, d in DRIVERS.items() if d.can_ban} == BAN_DRIVERS


@pytest.mark.parametrize("op", ["write", "attr", "delete", "rename"])
async def test_by_default_nothing_is_banned(store: Store, op: str) -> None:
    """Opt-in: a site that never set query_variants (every site stored before 0019) is planned
    as before, without a ban per changed file on its Varnish caches."""
    site = _site(store)
    assert site.query_variants is None and site.warnings() == []
    new = "css/b.css" if op == "rename" else ""
    change = Released(site.id, op, "css/a.css", new_path=new, kind="f")
    assert await _bans(store, site, change) == {k: [] for k in KINDS}
    purger = Purger(store)
    await purger.submit(site, ["http://www.example.com/a.css"], variants=True)
    assert not [q for q in store.pending_purges() if q.item.action == "ban"]


@pytest.mark.parametrize("op", ["write", "attr", "delete"])
async def test_a_file_change_bans_its_variants_on_varnish_only(store: Store, op: str) -> None:
    site = _site(store, query_variants=True)
    change = Released(site.id, op, "css/a.css", kind="f")
    assert await _bans(store, site, change) == {
        "varnish": ["/css/a.css?"],
        "nginx": [],
        "squid": [],
        "http": [],
    }


async def test_the_ban_comes_after_the_files_own_refresh(store: Store) -> None:
    site = _site(store, aliases=["cdn.example.com"], query_variants=True)
    items = await Purger(store)._plan(site, Released(site.id, "write", "a.css", kind="f"))
    varnish = [(i.action, i.url) for i in items if i.cache == "varnish"]
    assert varnish == [
        ("refresh", "http://www.example.com/a.css"),
        ("refresh", "http://cdn.example.com/a.css"),
        ("ban", "http://www.example.com/a.css?"),
        ("ban", "http://cdn.example.com/a.css?"),
    ]


async def test_an_index_file_bans_the_variants_of_its_directory_url(store: Store) -> None:
    site = _site(store, query_variants=True)
    bans = await _bans(store, site, Released(site.id, "write", "docs/index.html", kind="f"))
    assert bans["varnish"] == ["/docs/index.html?", "/docs/?"]


async def test_query_variants_off_bans_nothing(store: Store) -> None:
    site = _site(store, query_variants=False)
    for op in ("write", "delete"):
        bans = await _bans(store, site, Released(site.id, op, "a.css", kind="f"))
        assert bans == {k: [] for k in KINDS}
    assert site.warnings() == []


async def test_asking_for_them_warns_about_the_caches_that_cannot(store: Store) -> None:
    site = _site(store, query_variants=True)
    bans = await _bans(store, site, Released(site.id, "write", "a.css", kind="f"))
    assert bans["varnish"] == ["/a.css?"] and bans["nginx"] == bans["squid"] == []
    [warning] = site.warnings()
    assert "nginx (nginx), squid (squid), http (http) cannot purge by prefix" in warning
    only_varnish = store.update_site(site.id, caches=[site_cache("varnish")])
    assert only_varnish.warnings() == []


def site_cache(kind: str) -> dict[str, str]:
    return {"name": kind, "driver": kind, "address": "127.0.0.1:9"}


async def test_a_path_notice_bans_variants_and_a_url_submit_does_not(store: Store) -> None:
    site = _site(store, query_variants=True)
    purger = Purger(store)
    await purger.submit(site, ["http://www.example.com/a.css"], variants=True)
    await purger.submit(site, ["http://www.example.com/b.css"])
    bans = [(q.item.cache, q.item.url) for q in store.pending_purges() if q.item.action == "ban"]
    assert bans == [("varnish", "http://www.example.com/a.css?")]


async def test_an_erase_cut_short_bans_its_directory_not_each_files_variants(
    store: Store,
) -> None:
    """A truncated erase bans `/d/`, which reaches `/d/x.css?v=1`: no `/d/x.css?` besides."""
    site = _site(store, query_variants=True)
    change = Released(
        site.id, "erase", "d", kind="d", removed=("d/x.css", "d/y.css"), removed_truncated=True
    )
    bans = await _bans(store, site, change)
    assert bans["varnish"] == ["/d/"]


async def test_a_batch_drops_variant_bans_under_its_prefix_bans_and_repeated_bans(
    store: Store,
) -> None:
    """`rm -rf d` journaled one name at a time, and a file written twice, in one batch: the
    directory's ban covers its files' variants, and each ban is queued once."""
    site = _site(store, query_variants=True)
    purger = Purger(store)
    purger.reload_sites()
    purger._released.extend(
        [
            Released(site.id, "delete", "d/x.css", kind="f"),
            Released(site.id, "delete", "d/e/y.css", kind="f"),
            Released(site.id, "delete", "d", kind="d"),
            Released(site.id, "write", "a.css", kind="f"),
            Released(site.id, "write", "a.css", kind="f"),
            Released(site.id, "write", "dx.css", kind="f"),  # not under /d/
        ]
    )
    await purger._intake()
    bans = [
        q.item.url.removeprefix("http://www.example.com")
        for q in store.pending_purges()
        if q.item.action == "ban"
    ]
    assert bans == ["/d/", "/a.css?", "/dx.css?"]

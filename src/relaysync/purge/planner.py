"""The purge planner: the purge items one change makes on every cache of a site.

A write refreshes the path's URLs, a delete purges them and what lies under them, a rename does
both. Under a directory, a cache that takes bans bans a prefix; the others get a purge of every
path the origins reported removed (`CommitRecord.removed`) and every path the job log knows
under it (`PurgeStore.changed_paths_under`), however many: one left out would be served stale.
A path the origins reported to be a file or a link to one has nothing under it: no prefix. A
symlink to a directory stands for it (the atomic deploy's `current` -> `releases/6`): the
origins report it as "d", and creating, switching, deleting or renaming one is a directory
change of its path, with what they found under its old and new target (transfer/removal.py)
as the paths removed; a rename also purges what it replaced under its new path. A symlink
change of unknown kind (an older agent) is planned as a directory change. An attr change (a chmod that
unpublishes a file) refreshes the path's URLs like a write. An erase
(catch-up) purges what the origins removed, and bans its directory only if a list was cut.
On a cache that takes bans, a file's change is followed by a ban of its query-string variants
(`/a.css?` reaches `/a.css?v=3`) when the site turns `query_variants` on (opt-in: each is an
entry on Varnish's ban list); caches without bans cannot reach URLs they do not list
(docs/caches.md).
On a site with `listings` (purge/listings.py), the listing pages of the directories a change
took away are purged with the paths under them, with those of the directories the job log saw
made under it (`PurgeStore.made_dirs_under`: an empty one is named by no path); those of the
directories that gain or lose a name are refreshed once per batch (`ListingRefreshes`, fed by
the purger's intake).
`PurgePlanner` is mixed into Purger (purge/purger.py); `PurgeStore` is what the purger needs
from the master's store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from relaysync.protocol.messages import LOST_OP
from relaysync.purge import urls as urlmap
from relaysync.purge.drivers import DRIVERS, Driver
from relaysync.purge.jobs import Action, PurgeItem, PurgeResult, QueuedPurge, Retry
from relaysync.purge.listings import gone_listings, listing_urls
from relaysync.purge.ordering import Released
from relaysync.purge.site import CacheSpec, SiteSpec

logger = logging.getLogger(__name__)

MANY_PATHS_UNDER = 10_000  # a prefix with more known paths is logged: its purges take a while


class PurgeStore(Protocol):
    """What the purger needs from the master's store."""

    def list_sites(self) -> list[SiteSpec]: ...
    def server_states(self) -> dict[str, str]: ...
    def changed_paths_under(self, mapping_id: int, prefix: str) -> list[str]: ...
    def made_dirs_under(self, mapping_id: int, prefix: str) -> list[str]: ...
    def enqueue_purges(self, items: Sequence[PurgeItem]) -> list[QueuedPurge]: ...
    def pending_purges(self) -> list[QueuedPurge]: ...
    def finish_purges(
        self, done: Sequence[int], results: Sequence[PurgeResult], retries: Sequence[Retry]
    ) -> None: ...


def _can_ban(cache: CacheSpec) -> bool:
    return DRIVERS.get(cache.driver, Driver).can_ban


def _maybe_dir(change: Released) -> bool:
    """Whether a deleted, renamed or linked path may be a directory change: the origins said so
    (a symlink to a directory is one), or one did not say (an older agent). A file or a link
    to one needs no prefix purge."""
    return change.kind not in ("f", "l")


def _reported_under(change: Released) -> list[str]:
    """The removed paths the origins reported that lie under the change's path (no others:
    a target names only what it removed, and the master purges no more on its word)."""
    if not change.path:
        return list(change.removed)
    return [p for p in change.removed if p.startswith(change.path + "/")]


def _log_lost(site: SiteSpec) -> None:
    """An origin of `site` dropped commit reports (its queue's bound, the master down for
    long): its caches are purged whole."""
    logger.error(
        "site %s: an origin dropped commit reports past its queue's bound (the master was "
        "away for long); what they named is not known, so the whole site is purged",
        site.name,
    )


def _log_paths_under(site: SiteSpec, change: Released, count: int) -> None:
    if change.removed_truncated:
        logger.info(
            "site %s: %s %s: an origin listed only part of what it removed under it; "
            "the paths the job log knows are purged too",
            site.name,
            change.op,
            change.path,
        )
    if count > MANY_PATHS_UNDER:
        logger.info(
            "site %s: %s %s has %d known paths under it, purged one by one on caches %s",
            site.name,
            change.op,
            change.path,
            count,
            ", ".join(c.name for c in site.caches if not _can_ban(c)),
        )


def _variant_paths(change: Released) -> list[str]:
    """The paths whose query-string variants (`/a.css?v=3`) a change makes stale: the file
    written, deleted or renamed (both names: the new one's variants may be cached 404s), what
    an erase removed. A directory's (or a link to one) have its prefix ban: none here."""
    if change.kind == "d" and change.op != "erase":
        return []
    if change.op in ("write", "symlink", "attr", "delete"):
        return [change.path]
    if change.op == "rename":
        return [change.path, change.new_path] if change.new_path else [change.path]
    if change.op == "erase":
        return _reported_under(change)
    return []


def variant_items(site_id: int, cache: str, urls: Sequence[str]) -> list[PurgeItem]:
    """Return a ban of the query-string variants of each of `urls` (and of its other forms):
    `http://h/a.css?`, which reaches `/a.css?v=3` but neither `/a.css` nor `/a.css.map`."""
    return [
        PurgeItem(site_id=site_id, cache=cache, url=prefix, action="ban")
        for url in urls
        for prefix in urlmap.query_variant_prefixes(url)
    ]


def prune_bans(items: list[PurgeItem]) -> list[PurgeItem]:
    """Return `items` without the bans that add nothing to a batch: a ban repeated (same site,
    cache and URL), and a query-string variant ban (`http://h/d/a.css?`) that a prefix ban of
    the batch covers (`http://h/d/` reaches `/d/a.css?v=1`). Each is an entry on Varnish's ban
    list that every cached object is tested against (docs/caches.md)."""
    prefixes = {
        (i.site_id, i.cache, i.url) for i in items if i.action == "ban" and i.url.endswith("/")
    }
    seen: set[tuple[int, str, str]] = set()
    out: list[PurgeItem] = []
    for item in items:
        if item.action == "ban":
            key = (item.site_id, item.cache, item.url)
            if key in seen or (item.url.endswith("?") and _covered(item, prefixes)):
                continue
            seen.add(key)
        out.append(item)
    return out


def _covered(item: PurgeItem, prefixes: set[tuple[int, str, str]]) -> bool:
    """Whether a prefix ban in `prefixes` (of the item's site and cache) is a directory of the
    variant ban `item`'s URL (`http://h/`, `http://h/d/` for `http://h/d/a.css?`)."""
    url = item.url
    cut = url.find("/", url.find("//") + 2)
    while cut != -1:
        if (item.site_id, item.cache, url[: cut + 1]) in prefixes:
            return True
        cut = url.find("/", cut + 1)
    return False


def url_items(site_id: int, cache: str, urls: Sequence[str], action: Action) -> list[PurgeItem]:
    """Return the items of `action` on `urls`, and a purge (or ban) of each URL's other forms."""
    other: Action = "ban" if action == "ban" else "purge"
    out: list[PurgeItem] = []
    for url in urls:
        out.append(PurgeItem(site_id=site_id, cache=cache, url=url, action=action))
        out += [
            PurgeItem(site_id=site_id, cache=cache, url=u, action=other)
            for u in urlmap.other_forms(url)
        ]
    return out


class PurgePlanner:
    """Purger methods for planning (mixed into Purger)."""

    store: PurgeStore

    async def _plan(self, site: SiteSpec, change: Released) -> list[PurgeItem]:
        """Return the purge items of one change on every cache of the site."""
        if change.op == LOST_OP:  # an origin dropped reports: what changed is not known
            _log_lost(site)
            change = Released(change.site_id, "prefix", urlmap.mapping_path(site, ""))
        refresh: list[str] = []
        purge: list[str] = []
        prefixes: list[str] = []
        if change.op in ("write", "symlink", "attr"):
            refresh += urlmap.urls_for_path(site, change.path)
            prefixes += [change.path] if change.op == "symlink" and _maybe_dir(change) else []
        elif change.op == "delete":
            purge += urlmap.urls_for_path(site, change.path)
            prefixes += [change.path] if _maybe_dir(change) else []
        elif change.op == "rename":
            purge += urlmap.urls_for_path(site, change.path)
            refresh += urlmap.urls_for_path(site, change.new_path) if change.new_path else []
            if _maybe_dir(change):
                prefixes += [change.path, change.new_path] if change.new_path else [change.path]
        elif change.op == "erase":  # the directory stays: only what the origins removed goes
            for path in _reported_under(change):
                purge += urlmap.urls_for_path(site, path)
            if site.listings:  # and the directories it removed (its own listing is refreshed)
                made = await self._made_dirs(site, change.path)
                dirs = gone_listings(
                    change.path, _reported_under(change), itself=False, dirs_made=made
                )
                purge += listing_urls(site, dirs)
            prefixes += [change.path] if change.removed_truncated else []
        elif change.op == "prefix":
            prefixes.append(change.path)

        under, gone = await self._paths_under(site, change) if prefixes else ({}, {})
        variants = [u for p in _variant_paths(change) for u in urlmap.urls_for_path(site, p)]
        items: list[PurgeItem] = []
        for cache in site.caches:
            items += self._cache_items(site, cache, refresh, purge, prefixes, under, gone)
            if site.bans_query_variants(cache):  # after the path's own refresh or purge
                items += variant_items(site.id, cache.name, variants)
        return prune_bans(items)

    async def _made_dirs(self, site: SiteSpec, path: str) -> list[str]:
        """The directories the job log saw made under `path` (none on a site without listings)."""
        if not site.listings or site.mapping_id is None:
            return []
        return await anyio.to_thread.run_sync(self.store.made_dirs_under, site.mapping_id, path)

    async def _paths_under(
        self, site: SiteSpec, change: Released
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The paths under the change's directory (and its new name) to purge on caches without
        bans: those the origins reported removed, and those the job log knows; and the
        directories whose listings go with them (on a site with listings)."""
        if all(_can_ban(c) for c in site.caches):
            return {}, {}
        known: list[str] = []
        if site.mapping_id is not None:
            known = await anyio.to_thread.run_sync(
                self.store.changed_paths_under, site.mapping_id, change.path
            )
        old = sorted(set(known).union(_reported_under(change)))
        _log_paths_under(site, change, len(old))
        made = await self._made_dirs(site, change.path)
        under = {change.path: old}
        gone = {change.path: gone_listings(change.path, old, dirs_made=made)}
        if change.new_path:
            new = change.new_path
            moved = {new + p[len(change.path) :] for p in old}
            under[new] = sorted(moved.union(await self._replaced_under(site, change)))
            gone[new] = gone_listings(
                new, under[new], dirs_made=[new + d[len(change.path) :] for d in made]
            )
        return under, (gone if site.listings else {})

    async def _replaced_under(self, site: SiteSpec, change: Released) -> list[str]:
        """What a rename replaced under its new path (a directory or a symlink to one there):
        the paths the origins reported there and those the job log knows."""
        new = change.new_path
        known: list[str] = []
        if site.mapping_id is not None:
            known = await anyio.to_thread.run_sync(
                self.store.changed_paths_under, site.mapping_id, new
            )
        return known + [p for p in change.removed if p.startswith(new + "/")]

    def _cache_items(
        self,
        site: SiteSpec,
        cache: CacheSpec,
        refresh: list[str],
        purge: list[str],
        prefixes: list[str],
        under: dict[str, list[str]],
        gone: dict[str, list[str]],
    ) -> list[PurgeItem]:
        out = url_items(site.id, cache.name, refresh, "refresh")
        out += url_items(site.id, cache.name, purge, "purge")
        can_ban = _can_ban(cache)
        for prefix in prefixes:
            if can_ban:
                out += url_items(
                    site.id, cache.name, urlmap.urls_for_path(site, prefix, directory=True), "ban"
                )
                continue
            for path in under.get(prefix, ()):
                out += url_items(site.id, cache.name, urlmap.urls_for_path(site, path), "purge")
            listings = listing_urls(site, gone.get(prefix, ()))
            out += url_items(site.id, cache.name, listings, "purge")
        return out

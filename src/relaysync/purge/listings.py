"""Directory listings: the pages (`/dir/`) that a web server generates for a directory without an
index file (nginx `autoindex on;`, Apache mod_autoindex), which caches keep like any other page.

Only for sites with `listings` set. A change that adds or removes a name in a directory alters
its listing: a new file, a delete, a mkdir, a symlink, a rename (both directories). A commit
record does not say whether a write created its file or rewrote it, and nginx's and Apache's
default listings show each file's size and modification time anyway, so every write, and every
attribute change (the mtime), refreshes its directory's listing too. A listing still exists after
the change, so it is refreshed (`ListingRefreshes`: once per directory per batch of changes,
however many changes it has). The listings of directories that a delete, rename or erase took
away (`gone_listings`) are purged with the paths under them: those that the paths under them
name, and those the job log saw made (an empty directory is named by no path, and the origins
report files and links only).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

from relaysync.purge import urls as urlmap
from relaysync.purge.ordering import Released
from relaysync.purge.site import SiteSpec

NAME_OPS = frozenset({"write", "symlink", "mkdir", "delete", "attr"})  # the parent's listing


def changed_listings(change: Released) -> list[str]:
    """Return the directories (mapping paths, "" the root) whose listing `change` alters."""
    if change.op in NAME_OPS:
        dirs = [posixpath.dirname(change.path)]
        return dirs + [change.path] if change.op == "mkdir" else dirs  # its own: a cached 404
    if change.op == "rename":
        return [posixpath.dirname(change.path), posixpath.dirname(change.new_path)]
    if change.op == "erase":  # the directory stays; what it held changed
        return [change.path]
    return []


def gone_listings(
    top: str, paths: Iterable[str], *, itself: bool = True, dirs_made: Iterable[str] = ()
) -> list[str]:
    """Return `top` (unless not `itself`), every directory between it and `paths` under it, and
    `dirs_made` (directories under it, made by a mkdir: an empty one is named by no path)."""
    dirs = dict.fromkeys([top] if itself else [])
    for path in paths:
        head = posixpath.dirname(path)
        while head and head != top and head.startswith(top + "/" if top else ""):
            dirs[head] = None
            head = posixpath.dirname(head)
    dirs.update(dict.fromkeys(dirs_made))
    return list(dirs)


def listing_urls(site: SiteSpec, dirs: Iterable[str]) -> list[str]:
    """Return the listing URLs (`/dir/`) of directories (mapping paths) inside the site's root."""
    return [u for d in dirs for u in urlmap.urls_for_path(site, d, directory=True)]


class ListingRefreshes:
    """The listings a batch of changes alters, each directory once per site."""

    def __init__(self) -> None:
        self._sites: dict[int, SiteSpec] = {}
        self._dirs: dict[int, dict[str, None]] = {}

    def add(self, site: SiteSpec, change: Released) -> None:
        """Note the listings `change` alters (nothing for a site without listings)."""
        if not site.listings:
            return
        dirs = changed_listings(change)
        if dirs:
            self._sites[site.id] = site
            self._dirs.setdefault(site.id, {}).update(dict.fromkeys(dirs))

    def urls(self) -> Iterator[tuple[SiteSpec, list[str]]]:
        """Yield each site with the URLs of the listings noted, each once."""
        for site_id, dirs in self._dirs.items():
            site = self._sites[site_id]
            yield site, listing_urls(site, dirs)

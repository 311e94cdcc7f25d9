"""URL mapping: a changed file's path to the URLs the caches hold it under, and back.

A path inside a site's root becomes one URL per base URL and host alias, under the site's path
prefix, percent-encoded the way browsers encode a path (WHATWG URL standard): sub-delims such as
`( ) + ! ' , ; = : @ & $ *` stay literal, because Varnish and Squid key objects on the raw
request target and browsers send them so. Where that differs from the strict RFC 3986 form
(only unreserved characters literal), the strict form is a second URL to purge: a client or
CDN may have normalised to it. An index file is also reachable as its directory (`/dir/`).
URLs that come from outside (the listener) are checked to belong to the site and normalised
to the browser form. A base URL or alias written with its scheme's default port
(`https://www.example.com:443`) is also purged under the Host browsers send, without the port:
the caches key on the Host header, and a browser never sends a default port.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from relaysync.constants import MAX_PATH_BYTES
from relaysync.errors import ForeignUrl, UnsafePath
from relaysync.protocol.path_shape import path_fault
from relaysync.purge.site import SiteSpec

# What browsers leave literal in a path: every printable ASCII character but the WHATWG "path
# percent-encode set" (space " # < > ? ` { }), % itself (a literal % in a name must be %25) and
# the backslash (browsers turn it into / in http URLs). quote() also keeps letters, digits, -._~
BROWSER_SAFE_CHARS = "/!$&'()*+,;=:@[]^|"
STRICT_SAFE_CHARS = "/"  # RFC 3986 unreserved characters (quote()'s own) and / only
MAX_URL_BYTES = 8192  # longer URLs are refused (caches cap them near 8 KiB too)
DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True, slots=True)
class Url:
    """A URL split the way a cache needs it: the Host header and the request target."""

    scheme: str
    host: str  # host[:port] as sent in the Host header
    target: str  # percent-encoded path, with "?query" if any

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


def parse_url(url: str) -> Url:
    """Split a URL produced by this module (or already normalised). An empty query's `?` is
    kept: `/a.css?` is the prefix of the query variants of `/a.css` (query_variant_prefixes),
    and without it a ban would reach `/a.css.map` too."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query or (not parts.fragment and url.endswith("?")):
        target += "?" + parts.query
    return Url(parts.scheme, parts.netloc, target)


def query_variant_prefixes(url: str) -> list[str]:
    """Return the ban prefixes of the query-string variants of `url` (a URL without a query):
    `url?` and the same for each of its other forms, so that `/a.css?v=3` is reached but
    neither `/a.css` itself nor `/a.css.map`."""
    return [u + "?" for u in (url, *other_forms(url))]


def encode_path(path: str) -> str:
    """Percent-encode a decoded URL path (UTF-8) as a browser sends it: sub-delims stay literal."""
    return quote(path, safe=BROWSER_SAFE_CHARS, encoding="utf-8", errors="surrogateescape")


def strict_path(path: str) -> str:
    """Percent-encode a decoded URL path keeping only / and RFC 3986 unreserved characters."""
    return quote(path, safe=STRICT_SAFE_CHARS, encoding="utf-8", errors="surrogateescape")


def other_forms(url: str) -> list[str]:
    """Return the other request targets under which a cache may hold `url` (in browser form).

    That is the strict RFC 3986 form of its path, where it differs: what a client or a CDN that
    normalises URLs sends. The query is kept as it is.
    """
    parts = urlsplit(url)
    strict = strict_path(unquote(parts.path or "/", errors="surrogateescape"))
    if strict == (parts.path or "/"):
        return []
    query = f"?{parts.query}" if parts.query else ""
    return [f"{parts.scheme}://{parts.netloc}{strict}{query}"]


def browser_host(scheme: str, host: str) -> str:
    """`host` as browsers send it in the Host header: without its scheme's default port."""
    name, sep, port = host.rpartition(":")
    if sep and name and port == DEFAULT_PORTS.get(scheme.lower()):
        return name
    return host


def site_hosts(site: SiteSpec) -> list[tuple[str, str]]:
    """Return (scheme, host) for every base URL, and every alias under each base URL's scheme;
    a host written with the default port comes in the browsers' form first, then as written."""
    out: list[tuple[str, str]] = []
    for base in site.base_urls:
        parts = urlsplit(base)
        for host in (parts.netloc, *site.aliases):
            for form in (browser_host(parts.scheme, host.lower()), host.lower()):
                if (parts.scheme, form) not in out:
                    out.append((parts.scheme, form))
    return out


def relative_to_root(site: SiteSpec, path: str) -> str | None:
    """Return `path` (relative to the mapping) relative to the site root, or None if outside it
    (as is a path with a NUL or a '.' or '..' component, which the master's control server
    refuses first: master/report_paths.py; a cache would resolve `root/../x` to `/x`)."""
    if path_fault(path, allow_root=True) is not None:
        return None
    root = site.root.strip("/")
    if not root:
        return path
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None


def url_paths(site: SiteSpec, rel: str, *, directory: bool = False) -> list[str]:
    """Return the decoded URL paths of `rel` (relative to the site root).

    An index file also gives its directory's path with a trailing slash; `directory` gives
    only the directory's path (a prefix, for bans and listings).
    """
    prefix = "/" + site.path_prefix.strip("/")
    prefix = prefix if prefix == "/" else prefix + "/"
    rel = rel.strip("/")
    if directory:
        return [prefix + rel + "/" if rel else prefix]
    paths = [prefix + rel]
    head, name = posixpath.split(rel)
    if name in site.index_files:
        paths.append(prefix + head + "/" if head else prefix)
    return paths


def urls_for_path(site: SiteSpec, path: str, *, directory: bool = False) -> list[str]:
    """Return every URL under which `path` (relative to the mapping) is cached; [] if outside."""
    rel = relative_to_root(site, path)
    if rel is None:
        return []
    paths = url_paths(site, rel, directory=directory)
    return [
        f"{scheme}://{host}{encode_path(p)}" for scheme, host in site_hosts(site) for p in paths
    ]


def _check_segments(decoded: str, original: str) -> None:
    if "\0" in decoded or "\\" in decoded:
        raise UnsafePath(original, "NUL or backslash")
    if any(seg in (".", "..") for seg in decoded.split("/")):
        raise UnsafePath(original, "'.' or '..' segment")
    if len(decoded.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(original, f"over {MAX_PATH_BYTES} bytes")


def normalise_url(site: SiteSpec, url: str) -> str:
    """Return the canonical form of a URL that must belong to `site`.

    Raises:
        ForeignUrl: another scheme or host, or a path outside the site's prefix.
        UnsafePath: a path with '.' or '..' segments, NUL, backslash, or too long.
    """
    if len(url.encode("utf-8", "surrogateescape")) > MAX_URL_BYTES:
        raise ForeignUrl(url[:80] + "...", site.name, f"over {MAX_URL_BYTES} bytes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ForeignUrl(url, site.name, str(exc)) from exc
    if (parts.scheme.lower(), parts.netloc.lower()) not in site_hosts(site) or parts.username:
        raise ForeignUrl(url, site.name, "not one of its hosts")
    if parts.fragment:
        raise ForeignUrl(url, site.name, "a fragment is never sent to a cache")
    decoded = unquote(parts.path or "/", errors="surrogateescape")
    _check_segments(decoded, url)
    prefix = "/" + site.path_prefix.strip("/")
    if prefix != "/" and decoded != prefix and not decoded.startswith(prefix + "/"):
        raise ForeignUrl(url, site.name, f"outside its path prefix {prefix}")
    target = encode_path(decoded) + (f"?{parts.query}" if parts.query else "")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{target}"


def normalise_path(site: SiteSpec, path: str) -> str:
    """Return a path relative to the site root, checked: no '..', no NUL, nothing absolute.

    Raises:
        UnsafePath: the path could escape the site root.
    """
    _check_segments(path, path)
    cleaned = path.strip("/")
    if not cleaned and path not in ("", "/"):
        raise UnsafePath(path, "empty")
    if "//" in cleaned:
        raise UnsafePath(path, "empty segment")
    return cleaned


def mapping_path(site: SiteSpec, rel: str) -> str:
    """Return the mapping-relative path of `rel` (relative to the site root)."""
    root = site.root.strip("/")
    return f"{root}/{rel}".strip("/") if root else rel

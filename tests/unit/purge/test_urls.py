"""URL mapping: paths to URLs (aliases, prefixes, index files, encoding) and listener URL checks."""

from __future__ import annotations

import pytest

from relaysync.errors import ForeignUrl, UnsafePath
from relaysync.purge import urls
from relaysync.purge.site import SiteSpec

SITE = SiteSpec(
    id=1,
    name="www",
    provider="p",
    mapping_id=1,
    root="public",
    base_urls=("http://example.com",),
    aliases=("www.example.com",),
    path_prefix="/static/",
    index_files=("index.html",),
    caches=(),
    origins=(),
)


def test_path_gives_one_url_per_host_under_the_prefix() -> None:
    assert urls.urls_for_path(SITE, "public/a/b.css") == [
        "http://example.com/static/a/b.css",
        "http://www.example.com/static/a/b.css",
    ]


def test_index_file_also_gives_its_directory() -> None:
    got = urls.urls_for_path(SITE, "public/docs/index.html")
    assert (
        "http://example.com/static/docs/" in got
        and "http://example.com/static/docs/index.html" in got
    )
    assert "http://example.com/static/" in urls.urls_for_path(SITE, "public/index.html")


def test_paths_outside_the_root_have_no_urls() -> None:
    assert urls.urls_for_path(SITE, "private/x.txt") == []
    assert urls.urls_for_path(SITE, "publicity.txt") == []


def test_percent_encoding_is_what_browsers_send() -> None:
    assert (
        urls.urls_for_path(SITE, "public/a b/ü+%.txt")[0]
        == "http://example.com/static/a%20b/%C3%BC+%25.txt"
    )


@pytest.mark.parametrize(
    "name, target",
    [
        ("photo (1).jpg", "photo%20(1).jpg"),
        ("it's;a=b,c!d@e&f$g*h:i+j.txt", "it's;a=b,c!d@e&f$g*h:i+j.txt"),  # sub-delims, : and @
        (
            'q?"#<>`{}%.txt',
            "q%3F%22%23%3C%3E%60%7B%7D%25.txt",
        ),  # WHATWG path percent-encode set and %
        ("tab\t\x7f.txt", "tab%09%7F.txt"),  # controls
    ],
)
def test_browser_form(name: str, target: str) -> None:
    assert urls.encode_path("/" + name) == "/" + target


def test_the_strict_form_is_another_url_to_purge() -> None:
    url = urls.urls_for_path(SITE, "public/photo (1).jpg")[0]
    assert url == "http://example.com/static/photo%20(1).jpg"
    assert urls.other_forms(url) == ["http://example.com/static/photo%20%281%29.jpg"]
    assert urls.other_forms("http://example.com/static/a%20b.txt?v=(1)") == []
    assert urls.other_forms("http://example.com/static/c++.html?v=1") == [
        "http://example.com/static/c%2B%2B.html?v=1"
    ]


def test_index_file_directory_forms() -> None:
    got = urls.urls_for_path(SITE, "public/a (b)/index.html")
    assert "http://example.com/static/a%20(b)/" in got
    assert urls.other_forms("http://example.com/static/a%20(b)/") == [
        "http://example.com/static/a%20%28b%29/"
    ]


def test_directory_prefix() -> None:
    assert urls.urls_for_path(SITE, "public/a", directory=True)[0] == "http://example.com/static/a/"


def test_normalise_url_accepts_the_sites_own_urls() -> None:
    assert (
        urls.normalise_url(SITE, "HTTP://WWW.Example.com/static/a%20b.txt?v=1")
        == "http://www.example.com/static/a%20b.txt?v=1"
    )
    assert (
        urls.normalise_url(SITE, "http://example.com/static/a b.txt")
        == "http://example.com/static/a%20b.txt"
    )
    assert (
        urls.normalise_url(SITE, "http://example.com/static/c%2B%2B%20%281%29.html")
        == "http://example.com/static/c++%20(1).html"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.com/static/a.txt",
        "https://example.com/static/a.txt",
        "http://example.com/other/a.txt",
        "http://user@example.com/static/a.txt",
        "http://example.com/static/a.txt#frag",
        "http://example.com/static/" + "a" * 9000,
    ],
)
def test_normalise_url_refuses_foreign_urls(url: str) -> None:
    with pytest.raises(ForeignUrl):
        urls.normalise_url(SITE, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/static/../etc/passwd",
        "http://example.com/static/%2e%2e/x",
        "http://example.com/static/a%00b",
        "http://example.com/static/.%2Fx/./y",
    ],
)
def test_normalise_url_refuses_traversal(url: str) -> None:
    with pytest.raises(UnsafePath):
        urls.normalise_url(SITE, url)


@pytest.mark.parametrize("path", ["../x", "a/../../x", "a\\..\\x", "a\0b", "a//b"])
def test_normalise_path_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(UnsafePath):
        urls.normalise_path(SITE, path)

"""No URL is built for a path that leaves its site: a record's `root/../other/page.html` became
`/root/../other/page.html`, which every cache (and httpx before it) resolves to `/other/page.html`,
and a directory delete of `root/..` a ban of `/` on Varnish. The control server drops such
records first (master/report_paths.py); the URL map refuses them too."""

from __future__ import annotations

import dataclasses

import pytest

from relaysync.master.report_paths import with_safe_paths
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.protocol.path_shape import path_fault
from relaysync.purge import urls as urlmap
from tests.unit.purge.test_urls import SITE as URLS_SITE

SITE = dataclasses.replace(URLS_SITE, root="docs", aliases=(), path_prefix="/")
OUTSIDE = ("docs/../shop/x.html", "docs/..", "docs/./x", "docs//x", "docs/x/", "/docs/x", "d\x00x")


@pytest.mark.parametrize("path", OUTSIDE)
def test_a_path_leaving_its_root_has_no_url_and_is_refused_in_a_report(path: str) -> None:
    assert urlmap.urls_for_path(SITE, path) == []
    assert urlmap.urls_for_path(SITE, path, directory=True) == []
    assert path_fault(path) is not None


@pytest.mark.parametrize(
    "path", ["docs/x.html", "docs/.hidden", "docs/..x/y", "docs/x..", "docs/index.html", "docs"]
)
def test_a_path_inside_keeps_its_urls(path: str) -> None:
    assert urlmap.urls_for_path(SITE, path)
    assert path_fault(path) is None


def test_a_report_with_safe_paths_comes_back_as_it_is() -> None:
    report = CommitReport(
        mapping_id=1,
        source_node="a" * 64,
        target_node="b" * 64,
        watermark=2,
        records=(
            CommitRecord(seq=1, op="erase", path="", removed=("x", ".relaysync.tmp")),
            CommitRecord(seq=2, op="rename", path="a", new_path="b/c"),
        ),
    )
    assert with_safe_paths(report) == (report, None)
    assert with_safe_paths(report)[0] is report

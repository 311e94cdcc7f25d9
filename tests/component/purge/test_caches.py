"""The purger against real Varnish, nginx (cache-purge) and Squid: caches stop serving old bytes."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest
from tests.component.purge.conftest import ALIAS, HOST, O1, O2, Harness

pytestmark = pytest.mark.anyio

BOUND_S = 15.0  # every cache serves the new bytes within this after the origins commit (an upper bound: quiet runs take well under 1 s)


async def test_change_refreshes_every_cache(harness: Harness) -> None:
    harness.write("a.txt", b"one")
    harness.warm("a.txt")
    harness.write("a.txt", b"two")
    assert harness.get("varnish", "a.txt") == (200, b"one")  # the caches hold the old bytes
    harness.commit("write", "a.txt")
    await harness.until_served("a.txt", (200, b"two"), timeout_s=BOUND_S)
    want = {
        ("varnish", "refreshed", True),
        # the origin sends Vary: Accept-Encoding: nginx's bypass refresh rewrites only its main
        # key's file, the other variants get PURGE + GET each; the item is still "refreshed"
        ("nginx", "refreshed", True),
        ("squid", "refreshed", True),
    }

    def outcomes() -> set[tuple[str, str, bool | None]]:
        return {
            (e.cache, e.status, e.confirmed) for e in harness.store.purge_log(site=harness.site.id)
        }

    # the outcomes reach the purge log with the next flush (FLUSH_INTERVAL_S)
    await harness.until(lambda: outcomes() >= want, what="the outcomes in the purge log")
    log = harness.store.purge_log(site=harness.site.id)
    assert {(e.cache, e.status, e.confirmed) for e in log} >= want


async def test_waits_for_every_origin_that_is_up(harness: Harness) -> None:
    harness.write("b.txt", b"old")
    harness.warm("b.txt")
    harness.write("b.txt", b"new")
    harness.report(O1, "write", "b.txt", seq=100)
    # negative check: b.txt must not be refreshed yet. A later change committed on both origins
    # is worked on every cache first: b.txt, released before it, would have been too.
    await harness.later_change_worked("b-later.txt")
    for kind in harness.farm.caches:
        assert harness.get(kind, "b.txt") == (200, b"old"), kind  # o2 has not committed yet
    harness.report(O2, "write", "b.txt", seq=100)
    await harness.until_served("b.txt", (200, b"new"), timeout_s=BOUND_S)


async def test_an_origin_that_is_down_does_not_hold_back(harness: Harness) -> None:
    harness.store.set_server_state(O2, "down", 0.0)
    harness.write("c.txt", b"old")
    harness.warm("c.txt")
    harness.write("c.txt", b"new")
    harness.report(O1, "write", "c.txt", seq=200)
    await harness.until_served("c.txt", (200, b"new"), timeout_s=BOUND_S)
    # o2 returns and replays the change: the URL is refreshed again
    harness.store.set_server_state(O2, "up", 0.0)
    before = len(harness.results)
    harness.report(O2, "write", "c.txt", seq=200)
    with anyio.fail_after(BOUND_S):
        while len(harness.results) < before + len(harness.farm.caches):
            await anyio.sleep(0.02)


async def test_delete_makes_caches_answer_404(harness: Harness) -> None:
    harness.write("gone.txt", b"here")
    harness.warm("gone.txt")
    (harness.folder / "gone.txt").unlink()
    harness.commit("delete", "gone.txt")
    await harness.until_served("gone.txt", (404, None), timeout_s=BOUND_S)


async def test_index_file_refreshes_the_directory_url(harness: Harness) -> None:
    harness.write("docs/index.html", b"<p>v1</p>")
    harness.warm("docs/")
    harness.warm("docs/index.html")
    harness.write("docs/index.html", b"<p>v2</p>")
    harness.commit("write", "docs/index.html")
    await harness.until_served("docs/", (200, b"<p>v2</p>"), timeout_s=BOUND_S)
    await harness.until_served("docs/index.html", (200, b"<p>v2</p>"), timeout_s=BOUND_S)


async def test_aliases_are_refreshed_too(harness: Harness) -> None:
    harness.write("alias.txt", b"one")
    harness.warm("alias.txt", hosts=(HOST, ALIAS))
    harness.write("alias.txt", b"two")
    harness.commit("write", "alias.txt")
    await harness.until_served("alias.txt", (200, b"two"), hosts=(HOST, ALIAS), timeout_s=BOUND_S)


async def test_encoded_paths(harness: Harness) -> None:
    name = "a b+ü%.txt"
    as_browsers_send = "a%20b+%C3%BC%25.txt"
    strict = "a%20b%2B%C3%BC%25.txt"  # what a client or CDN normalising to RFC 3986 sends
    harness.write(name, b"one")
    harness.warm(as_browsers_send)
    harness.warm(strict)
    harness.write(name, b"two")
    harness.commit("write", name)
    await harness.until_served(as_browsers_send, (200, b"two"), timeout_s=BOUND_S)
    await harness.until_served(strict, (200, b"two"), timeout_s=BOUND_S)


@pytest.mark.parametrize(
    "name, as_browsers_send",
    [
        ("photo (1).jpg", "photo%20(1).jpg"),
        ("c++.html", "c++.html"),
        ("it's;a=b,c!d@e&f$g*h:i.txt", "it's;a=b,c!d@e&f$g*h:i.txt"),
    ],
)
async def test_the_url_browsers_send_is_refreshed_and_confirmed(
    harness: Harness, name: str, as_browsers_send: str
) -> None:
    """Varnish and Squid key on the raw request target: sub-delims must be sent literally."""
    harness.write(name, b"one")
    harness.warm(as_browsers_send)
    harness.write(name, b"two")
    harness.commit("write", name)
    await harness.until_served(as_browsers_send, (200, b"two"), timeout_s=BOUND_S)
    with anyio.fail_after(BOUND_S):
        while not all(
            any(
                r.item.cache == kind
                and r.item.action == "refresh"
                and r.item.url.endswith("/" + as_browsers_send)
                and r.confirmed
                for r in harness.results
            )
            for kind in harness.farm.caches
        ):
            await anyio.sleep(0.02)


async def test_a_ban_and_a_refresh_of_one_url_both_run(harness: Harness) -> None:
    """One report: docs/index.html rewritten (refresh of /docs/), then docs deleted (ban of
    /docs/ on Varnish): both act on the URL /docs/, and the ban must not be dropped."""
    from relaysync.protocol.messages import CommitRecord, CommitReport

    harness.write("docs/index.html", b"index")
    harness.write("docs/other.txt", b"other")
    _record_writes(harness, ["docs/index.html", "docs/other.txt"])
    harness.warm("docs/other.txt")
    harness.warm("docs/")
    for path in ("docs/other.txt", "docs/index.html"):
        (harness.folder / path).unlink()
    (harness.folder / "docs").rmdir()
    records = (
        CommitRecord(seq=1, op="write", path=f"{harness.site.root}/docs/index.html"),
        CommitRecord(seq=2, op="delete", path=f"{harness.site.root}/docs"),
    )
    for target in (O1, O2):
        harness.purger.on_commit_report(
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=target,
                watermark=2,
                records=records,
            )
        )
    await harness.until_served("docs/other.txt", (404, None), timeout_s=BOUND_S)
    await harness.until_served("docs/", (404, None), timeout_s=BOUND_S)
    assert any(r.item.action == "ban" and r.item.url.endswith("/docs/") for r in harness.results)


async def test_file_rename_purges_old_and_refreshes_new(harness: Harness) -> None:
    harness.write("old.txt", b"content")
    harness.warm("old.txt")
    harness.warm("new.txt")  # a 404 for the new name is cached too
    (harness.folder / "old.txt").rename(harness.folder / "new.txt")
    harness.commit("rename", "old.txt", new_path="new.txt")
    await harness.until_served("old.txt", (404, None), timeout_s=BOUND_S)
    await harness.until_served("new.txt", (200, b"content"), timeout_s=BOUND_S)


async def test_directory_rename_purges_what_was_under_it(harness: Harness) -> None:
    for name in ("x.txt", "sub/y.txt"):
        harness.write(f"dir1/{name}", name.encode())
        harness.commit("write", f"dir1/{name}")
    await harness.until_served("dir1/sub/y.txt", (200, b"sub/y.txt"), timeout_s=BOUND_S)
    # every purge of the two writes is done (its queue row goes with its outcome's flush)
    await harness.until(lambda: harness.store.queued_purges() == 0, what="the writes' purges done")
    harness.warm("dir1/x.txt")
    harness.warm("dir1/sub/y.txt")
    harness.warm("dir2/x.txt")
    _record_writes(harness, ["dir1/x.txt", "dir1/sub/y.txt"])
    (harness.folder / "dir1").rename(harness.folder / "dir2")
    harness.commit("rename", "dir1", new_path="dir2")
    await harness.until_served("dir1/x.txt", (404, None), timeout_s=BOUND_S)
    await harness.until_served("dir1/sub/y.txt", (404, None), timeout_s=BOUND_S)
    await harness.until_served("dir2/x.txt", (200, b"x.txt"), timeout_s=BOUND_S)


def _record_writes(harness: Harness, paths: list[str]) -> None:
    from relaysync.protocol.messages import CommitRecord, CommitReport

    records = tuple(
        CommitRecord(seq=900 + i, op="write", path=f"{harness.site.root}/{p}")
        for i, p in enumerate(paths)
    )
    harness.store.record_commit_reports(
        [
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=O1,
                watermark=0,
                records=records,
            )
        ]
    )


async def test_a_cache_down_is_refreshed_when_it_returns(harness: Harness) -> None:
    nginx = harness.farm.caches["nginx"]
    harness.write("down.txt", b"old")
    harness.warm("down.txt")
    harness.write("down.txt", b"new")
    await anyio.to_thread.run_sync(nginx.stop)
    try:
        harness.commit("write", "down.txt")

        def nginx_backing_off() -> bool:  # a purge to nginx failed and its retry is durable
            return any(
                q.item.cache == "nginx" and q.attempts >= 1 for q in harness.store.pending_purges()
            )

        await harness.until(nginx_backing_off, what="a failed purge to nginx rescheduled")
        assert harness.store.queued_purges() >= 1
    finally:
        await anyio.to_thread.run_sync(nginx.start)
    # nginx kept its disk cache: until the queued purge arrives it serves the old bytes
    await harness.until_served("down.txt", (200, b"new"), timeout_s=BOUND_S)


class _RefusingCache(BaseHTTPRequestHandler):
    """A generic HTTP cache that does not allow us to purge (its ACL is wrong)."""

    def do_PURGE(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_refused_purge_is_a_configuration_error(harness: Harness) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingCache)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        harness.store.update_site(
            harness.site.id,
            caches=[
                {
                    "name": "acl-wrong",
                    "driver": "http",
                    "address": f"127.0.0.1:{server.server_address[1]}",
                    "method": "PURGE",
                    "path_template": "/purge{path}",
                    "refresh": False,
                }
            ],
        )
        harness.purger.reload_sites()
        notes: list[tuple[str, dict[str, object]]] = []
        harness.purger.notify = lambda kind, data: notes.append((kind, data))
        harness.write("r.txt", b"x")
        harness.commit("write", "r.txt")
        with anyio.fail_after(BOUND_S):
            while len(harness.results) < 2:  # two hosts: www and cdn
                await anyio.sleep(0.02)
        assert {r.status for r in harness.results} == {"refused"}
        assert [kind for kind, _ in notes] == ["purge_refused"]  # once per cache, not per item
        assert "path_template" in str(notes[0][1]["error"])  # what to check
        # the refusals are logged, and the items kept for a probe after the fix
        await harness.until(
            lambda: (
                len(
                    [
                        e
                        for e in harness.store.purge_log(site=harness.site.id)
                        if e.status == "refused"
                    ]
                )
                >= 2
            ),
            what="the refusals logged",
        )
        assert harness.store.queued_purges() == 2  # kept (probed every refused_probe_s)
    finally:
        server.shutdown()
        server.server_close()

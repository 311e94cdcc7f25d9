"""A purger over a real store, in front of the session's real caches, fed with commit reports."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.master.store._site_tables import Site
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge.jobs import PurgeResult
from relaysync.purge.purger import Purger
from relaysync.purge.site import SiteSpec
from relaysync.testing.caches import CacheFarm, http_get

SOURCE, O1, O2 = "a" * 64, "b" * 64, "c" * 64
WAIT_S = 30.0  # generous bound for polls of the purger's own bookkeeping (store rows, results)
HOST, ALIAS = "www.example.com", "cdn.example.com"
_sites = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Harness:
    store: Store
    purger: Purger
    farm: CacheFarm
    site: SiteSpec
    folder: Path  # the site's root on the origin (a folder of the docroot)
    mapping_id: int
    results: list[PurgeResult] = field(default_factory=list)
    seqs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def write(self, rel: str, data: bytes) -> None:
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def report(self, target: str, op: str, path: str, *, seq: int, new_path: str = "") -> None:
        extra: dict[str, Any] = {"new_path": new_path} if new_path else {}
        record = CommitRecord(seq=seq, op=op, path=f"{self.site.root}/{path}", **extra)
        self.purger.on_commit_report(
            CommitReport(
                mapping_id=self.mapping_id,
                source_node=SOURCE,
                target_node=target,
                watermark=seq,
                records=(record,),
            )
        )

    def commit(self, op: str, path: str, *, new_path: str = "") -> int:
        """Report one change committed on both origins; return its seq."""
        seq = next(self.seqs)
        for target in (O1, O2):
            self.report(
                target,
                op,
                path,
                seq=seq,
                new_path=f"{self.site.root}/{new_path}" if new_path else "",
            )
        return seq

    def url_path(self, rel: str) -> str:
        return f"/{self.site.root}/{rel}"

    def get(self, kind: str, rel: str, host: str = HOST) -> tuple[int, bytes]:
        status, body, _ = http_get(self.farm.caches[kind].port, self.url_path(rel), host=host)
        return status, body

    def warm(self, rel: str, hosts: tuple[str, ...] = (HOST,)) -> None:
        for kind in self.farm.caches:
            for host in hosts:
                self.get(kind, rel, host)
                self.get(kind, rel, host)

    async def until_served(
        self,
        rel: str,
        want: tuple[int, bytes | None],
        *,
        hosts: tuple[str, ...] = (HOST,),
        timeout_s: float = 5.0,
    ) -> float:
        """Poll every cache until it serves `want` (body None: any); return the seconds it took."""
        started = time.monotonic()
        pending = {(k, h) for k in self.farm.caches for h in hosts}
        last: dict[tuple[str, str], tuple[int, bytes]] = {}
        while pending and time.monotonic() - started < timeout_s:
            for kind, host in sorted(pending):
                got = await anyio.to_thread.run_sync(self.get, kind, rel, host)
                last[(kind, host)] = got
                if got[0] == want[0] and (want[1] is None or got[1] == want[1]):
                    pending.discard((kind, host))
            await anyio.sleep(0.01)
        assert not pending, (
            f"still stale after {timeout_s} s: { {k: last.get(k) for k in pending} }"
        )
        return time.monotonic() - started

    async def until(
        self, condition: Callable[[], Any], *, what: str, timeout_s: float = WAIT_S
    ) -> Any:
        """Poll `condition` (run in a worker thread: it may read the store) until it is truthy;
        return its value, or fail after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await anyio.to_thread.run_sync(condition)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
            await anyio.sleep(0.01)

    async def later_change_worked(self, rel: str) -> None:
        """A positive sync point for negative checks: commit a later change to `rel` on both
        origins and wait until every cache has a result for it. The purger takes changes and
        queued items in order, so whatever it was given before was worked on by then."""
        self.write(rel, b"later")
        self.commit("write", rel)
        target = self.url_path(rel)
        await self.until(
            lambda: (
                {r.item.cache for r in self.results if r.item.url.endswith(target)}
                >= set(self.farm.caches)
            ),
            what=f"every cache's result for {rel}",
        )

    async def submit_one(self, rel: str) -> list[tuple[str, dict[str, object]]]:
        """Take the site's caches from the store again and submit one item for `rel`.

        Returns:
            the list the purger's notifications (kind, data) go to from now on.
        """
        self.purger.reload_sites()
        notes: list[tuple[str, dict[str, object]]] = []
        self.purger.notify = lambda kind, data: notes.append((kind, data))
        site = self.purger.site_by_name(self.site.name)
        assert site is not None
        await self.purger.submit(site, [f"http://{HOST}/{site.root}/{rel}"])
        return notes

    async def refused_at_purge(self, cache: dict[str, Any]) -> str:
        """Store `cache` as the site's only one the way a row saved before the checks at save
        was (past them), and submit an item: the cache is probed a few times, the operator
        told once (one purge_refused) and the item kept for the fix.

        Returns:
            the purge_refused notification's error, which says what to fix.
        """
        with self.store._write("test: a row saved before the checks at save") as session:
            row = session.get(Site, self.site.id)
            assert row is not None
            defaults = {
                "refresh": True,
                "method": "PURGE",
                "path_template": "{path}",
                "headers": {},
            }
            row.caches = [{**defaults, **cache}]
        notes = await self.submit_one("x.txt")
        await self.until(
            lambda: sum(r.status == "refused" for r in self.results) >= 3,
            what="the misconfigured cache probed a few times",
        )
        assert [k for k, _ in notes] == ["purge_refused"], notes
        assert self.purger.queued + len(self.purger._busy) >= 1  # kept for the fix
        return str(notes[0][1]["error"])


@pytest.fixture
def purger_options() -> dict[str, Any]:
    """Extra Purger arguments; a module overrides this fixture to change them."""
    return {}


@pytest.fixture
async def harness(
    cache_farm: CacheFarm, tmp_path: Path, purger_options: dict[str, Any]
) -> AsyncIterator[Harness]:
    store = Store(f"sqlite:///{tmp_path / 'master.db'}")
    store.migrate()
    for node, name in ((SOURCE, "src"), (O1, "o1"), (O2, "o2")):
        store.upsert_server(node_id=node, name=name, region="r", group="g", address="127.0.0.1:1")
        store.set_server_state(node, "up", time.time())
    n = next(_sites)
    mapping = store.create_mapping(
        name=f"m{n}", source="src", source_path="/src", targets=[("o1", "/t1"), ("o2", "/t2")]
    )
    root = f"site{n}-{int(time.time() * 1000)}"
    (cache_farm.docroot / root).mkdir()
    site = store.create_site(
        name=f"site{n}",
        provider="acme",
        mapping=mapping.id,
        root=root,
        base_urls=[f"http://{HOST}"],
        aliases=[ALIAS],
        path_prefix=f"/{root}/",
        caches=[
            {"name": kind, "driver": kind, "address": c.address}
            for kind, c in cache_farm.caches.items()
        ],
        origins=[{"server": "o1", "url": cache_farm.origin.url}, {"server": "o2"}],
    )
    options = {"retry_min_s": 0.05, "retry_max_s": 0.5, "hold_max_s": 30.0, **purger_options}
    purger = Purger(store, **options)
    h = Harness(store, purger, cache_farm, site, cache_farm.docroot / root, mapping.id)
    purger.listeners.append(h.results.append)
    async with anyio.create_task_group() as tg:
        await tg.start(purger.serve)
        yield h
        tg.cancel_scope.cancel()
    store.close()

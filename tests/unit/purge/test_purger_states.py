"""The purger's server states: read only while a site needs them, and fresh for the first site."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.purge import purger as purger_module
from relaysync.purge.purger import Purger
from tests.unit.purge.conftest import O1

pytestmark = pytest.mark.anyio

WAIT_S = 30.0  # generous bound for the purger's loop to go round


class CountingStore:
    """The store, counting the purger's reads of server states and of sites."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.state_reads = 0
        self.site_reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def server_states(self) -> dict[str, str]:
        self.state_reads += 1
        return self.store.server_states()

    def list_sites(self) -> object:
        self.site_reads += 1
        return self.store.list_sites()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        await anyio.sleep(0.01)


async def test_no_state_reads_without_a_site_and_fresh_states_for_the_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no site, nothing uses the server states: the state loop read them 4 times a second
    for nothing (a worker thread and a store read each). The first site gets them at once."""
    monkeypatch.setattr(purger_module, "STATE_INTERVAL_S", 0.01)
    monkeypatch.setattr(purger_module, "SITES_RELOAD_S", 0.0)  # each round reloads the sites
    counting = CountingStore(store)
    purger = Purger(counting)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(purger.serve)
        at_start = counting.state_reads
        store.set_server_state(O1, "down", time.time())
        rounds = counting.site_reads
        await _until(lambda: counting.site_reads >= rounds + 5, "five rounds of the state loop")
        assert counting.state_reads == at_start
        mapping = store.create_mapping(
            name="m", source="src", source_path="/src", targets=[("o1", "/t1")]
        )
        store.create_site(
            name="s",
            provider="acme",
            mapping=mapping.id,
            root="",
            base_urls=["http://www.example.com"],
            path_prefix="/",
            caches=[{"name": "c1", "driver": "nginx", "address": "127.0.0.1:9"}],
            origins=[{"server": "o1"}],
        )
        await anyio.to_thread.run_sync(purger.reload_sites)  # what the sites API does
        assert purger._states[O1] == "down"  # read with the sites, before any report meets them
        reads = counting.state_reads
        await _until(lambda: counting.state_reads >= reads + 3, "state reads with a site")
        tg.cancel_scope.cancel()

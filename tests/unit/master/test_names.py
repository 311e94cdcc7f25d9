"""Names checked with a whole-string match: a final newline (which `^...$` with re.match lets
through) is refused everywhere, and server names are unique in any case, like DNS names."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.auth.ca import CertificateAuthority, check_node_name, make_key_and_csr
from relaysync.errors import ConfigError
from relaysync.master.store import Store
from relaysync.master.store._routing import check_topology_name
from relaysync.purge.addresses import valid_host_port


@pytest.mark.parametrize("name", ["web1\n", "relaysync-master\n", "web1\n\n", "\nweb1"])
def test_a_node_name_with_a_newline_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        check_node_name(name)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    with pytest.raises(ConfigError, match="not valid"):
        ca.sign_csr(make_key_and_csr("x")[1], name=name)


@pytest.mark.parametrize("name", ["master", "Master", "MASTER", "relaysync-master"])
def test_the_names_the_master_goes_by_are_reserved(name: str) -> None:
    """ "master" is the server name of the master's own figures in monitoring."""
    with pytest.raises(ConfigError, match="reserved for the master"):
        check_node_name(name)
    check_node_name(name + "-2")  # only the names themselves


def test_a_region_or_group_name_with_a_newline_is_refused() -> None:
    assert check_topology_name("eu-west", "region") == "eu-west"
    with pytest.raises(ConfigError):
        check_topology_name("eu-west\n", "region")


def test_a_port_with_a_newline_is_refused() -> None:
    assert valid_host_port("cache.example:8080")
    assert not valid_host_port("cache.example:8080\n")


def test_a_cache_method_with_a_newline_is_refused(store: Store) -> None:
    cache = {"name": "v1", "driver": "http", "address": "127.0.0.1:1", "method": "PURGE\n"}
    with pytest.raises(ConfigError, match="not an HTTP method"):
        store.create_site(
            name="www",
            provider="acme",
            mapping=None,
            base_urls=["http://x.example"],
            caches=[cache],
        )


def test_server_names_are_unique_in_any_case(store: Store) -> None:
    store.upsert_server(node_id="a" * 64, name="web1", region="", group="", address="")
    with pytest.raises(ConfigError, match="already used"):
        store.upsert_server(node_id="b" * 64, name="Web1", region="", group="", address="")
    assert [s.name for s in store.list_servers()] == ["web1"]
    store.upsert_server(node_id="a" * 64, name="WEB1", region="", group="", address="")  # itself

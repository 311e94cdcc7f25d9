"""agent/_join_trust.py: a join token never goes over plain http to another host, and the words
of a join that fails over http."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trustme

import relaysync.agent._join_trust as join_trust
from relaysync.config.schema import AgentConfig
from relaysync.errors import ConfigError
from tests.unit.auth.test_api_trust import tls_server


def _cfg(url: str, **extra: object) -> AgentConfig:
    return AgentConfig(master_url=url, name="web-1", data_dir="/unused", **extra)  # type: ignore[arg-type]


@pytest.fixture
def another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 judged as another host's address: a test cannot listen on one."""
    monkeypatch.setattr(join_trust, "is_loopback", lambda host: False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("another_host")
def test_plain_http_to_another_host_is_refused_with_https_named() -> None:
    port = _free_port()  # nothing listens: the probe finds no TLS
    with pytest.raises(ConfigError) as refused:
        join_trust.join_verify(_cfg(f"http://127.0.0.1:{port}"), "ab" * 32)
    message = str(refused.value)
    assert f"use --master https://127.0.0.1:{port}" in message and "in clear" in message


@pytest.mark.usefixtures("another_host")
def test_plain_http_to_a_master_that_serves_https_says_so(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    with tls_server(tmp_path / "chain.pem", tmp_path / "chain.pem") as (port, received):
        with pytest.raises(ConfigError) as refused:
            join_trust.join_verify(_cfg(f"http://127.0.0.1:{port}"), "ab" * 32)
    assert f"the master serves https: use --master https://127.0.0.1:{port}" in str(refused.value)
    assert received == [b""]  # nothing was sent: no request, no token


@pytest.mark.usefixtures("another_host")
@pytest.mark.parametrize("flag", ["allow_plain_http_join", "insecure_first_join"])
def test_plain_http_to_another_host_only_when_asked(flag: str) -> None:
    assert join_trust.join_verify(_cfg("http://127.0.0.1:1", **{flag: True}), "ab" * 32) is True


def test_plain_http_on_loopback_is_taken() -> None:
    assert join_trust.join_verify(_cfg("http://127.0.0.1:1"), "ab" * 32) is True


def test_a_dropped_plain_request_names_https_and_reads_cleanly() -> None:
    exc = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    message = str(join_trust.join_error("http://127.0.0.1:8470", exc))
    assert "use https://" in message and ".." not in message

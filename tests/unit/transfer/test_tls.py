"""tls.connect: a peer address that is not host:port is a link failure, never a ValueError."""

from __future__ import annotations

import ssl

import anyio
import pytest

from relaysync.errors import LinkDown
from relaysync.transfer import tls


@pytest.mark.parametrize("address", ["127.0.0.1:http", "no-port", "127.0.0.1:99999", ":80", "h:٣"])
def test_an_address_that_is_not_host_port_is_a_link_failure(address: str) -> None:
    """The address is what a peer registered, passed on by the master: a link that cannot use it
    retries and reports the failed hop like any link failure (a ValueError or OverflowError
    escaped the link's retry loop)."""
    with pytest.raises(LinkDown, match="not a host:port"):
        anyio.run(lambda: tls.connect(address, ssl.create_default_context()))
    with pytest.raises(LinkDown, match="not a host:port"):
        anyio.run(lambda: tls.connect_plain(address))


@pytest.mark.parametrize("silent", [anyio.EndOfStream(), ConnectionResetError(), TimeoutError()])
def test_a_handshake_ended_by_an_exception_that_says_nothing_names_it(
    silent: BaseException,
) -> None:
    """`exc or type(exc).__name__` printed "" (an exception is always true): operators read
    "link to ... is down: . Will retry." with no reason."""
    with pytest.raises(LinkDown) as caught, tls.map_tls_errors("the node at 127.0.0.1:9"):
        raise silent
    assert type(silent).__name__ in str(caught.value)

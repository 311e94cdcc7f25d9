"""The master's TCP probe against real sockets and the real resolver."""

from __future__ import annotations

import socket

import anyio
import pytest

from relaysync.monitor.probes import tcp_probe

# .invalid never resolves (RFC 6761): the resolver fails with a getaddrinfo error, whose code is
# a negative EAI_* value, not an errno.
UNRESOLVABLE = "relaysync-probe-test.invalid"


def test_a_name_that_does_not_resolve_says_so() -> None:
    """The alert's message carries the resolver's reason, not "Unknown error -2"."""
    with pytest.raises(socket.gaierror) as expected:
        socket.getaddrinfo(UNRESOLVABLE, 80)
    result = anyio.run(tcp_probe, UNRESOLVABLE, 80, 5.0)
    assert not result.ok
    assert result.detail == expected.value.strerror, result.detail

"""Ports a server keeps across restarts come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relaysync._util import ports


def test_a_stable_port_is_free_and_below_the_ephemeral_range() -> None:
    first = ports.first_ephemeral_port()
    for _ in range(20):
        port = ports.stable_free_port("127.0.0.1")
        assert ports.LOWEST_PORT <= port < first
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: the pick held nothing


def test_a_range_whose_ports_are_all_taken_ends_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only port of the range held: an OSError naming the range, after a bounded search."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST_PORT", taken)
        fake = tmp_path / "ip_local_port_range"
        fake.write_text(f"{taken + 1}\t60999\n")
        monkeypatch.setattr(ports, "EPHEMERAL_RANGE", fake)
        monkeypatch.setattr(ports, "ATTEMPTS", 5)
        with pytest.raises(OSError, match=f"between {taken} and {taken + 1}"):
            ports.stable_free_port("127.0.0.1")


def test_an_unreadable_range_falls_back_to_linux_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert ports.first_ephemeral_port() == ports.DEFAULT_FIRST_EPHEMERAL

"""The agent's count of TCP sockets comes from the kernel's counters (/proc/net/sockstat and
sockstat6: IPv4 and IPv6 in use, plus TIME_WAIT), not from a walk of /proc/net/tcp and every
process's descriptors (psutil.net_connections: 10 ms a report, taken from a copy in flight)."""

from __future__ import annotations

import socket
from pathlib import Path

from relaysync.monitor.collectors import _tcp_connections

SOCKSTAT = """sockets: used 291
TCP: inuse 12 orphan 1 tw 30 alloc 15 mem 4
UDP: inuse 2 mem 1
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""
SOCKSTAT6 = """TCP6: inuse 5
UDP6: inuse 1
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
"""


def test_ipv4_ipv6_and_time_wait_sockets_are_counted(tmp_path: Path) -> None:
    (tmp_path / "sockstat").write_text(SOCKSTAT)
    (tmp_path / "sockstat6").write_text(SOCKSTAT6)
    assert _tcp_connections(str(tmp_path)) == 12 + 5 + 30


def test_without_ipv6_or_with_an_odd_file_it_counts_what_it_can_or_leaves_the_figure_out(
    tmp_path: Path,
) -> None:
    assert _tcp_connections(str(tmp_path)) is None  # no /proc/net at all
    (tmp_path / "sockstat").write_text(SOCKSTAT)
    assert _tcp_connections(str(tmp_path)) == 42  # no sockstat6: a kernel without IPv6
    (tmp_path / "sockstat").write_text("TCP: inuse many\n")
    assert _tcp_connections(str(tmp_path)) is None
    (tmp_path / "sockstat").write_text("UDP: inuse 3\n")
    assert _tcp_connections(str(tmp_path)) is None


def test_the_real_count_sees_the_listening_sockets_of_this_process() -> None:
    held = []
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            for _ in range(3):
                s = socket.socket(family, socket.SOCK_STREAM)
                held.append(s)
                s.bind((host, 0))
                s.listen()
        count = _tcp_connections()
        assert count is not None and count >= len(held)
    finally:
        for s in held:
            s.close()

"""Where other servers reach this agent's peer server (the address it registers with the master).

advertise_host if set; else the listen host; else, listening on every interface, this host's
address on the route to the master, which the control link checks again at every session
(`route_address`): an address changed by DHCP or a failover reaches the master at the next
reconnect.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket

import anyio

from relaysync._util.addresses import (
    address_problem,
    is_unspecified,
    join_address,
    local_address_towards,
)
from relaysync.config.load import split_address
from relaysync.errors import ConfigError

logger = logging.getLogger(__name__)


def follows_route(advertise_host: str, host: str) -> bool:
    """Whether the advertised address is the one on the route to the master (nothing chosen:
    `advertised_address` takes an advertise_host of every interface as none)."""
    return is_unspecified(advertise_host or host)


def listens_ipv4_only(host: str) -> bool:
    """Whether a peer server on `host` takes IPv4 only (0.0.0.0, an IPv4 address or name): an
    IPv6 address on the route to the master is then no address peers reach it at."""
    return ":" not in host


async def advertised_address(
    advertise_host: str, host: str, port: int, control_address: str
) -> str:
    """Where other servers reach this agent's peer server: advertise_host, else the listen
    host, else (listening on every interface) this host's address on the route to the master.

    Raises:
        ConfigError: that is no address a peer can connect to.
    """
    chosen = advertise_host or host
    if is_unspecified(chosen):
        master_host, master_port = split_address(control_address)
        family = socket.AF_INET if listens_ipv4_only(host) else socket.AF_UNSPEC
        try:
            chosen = await anyio.to_thread.run_sync(
                local_address_towards, master_host, master_port, family
            )
        except OSError as exc:
            raise ConfigError(
                f"listening on every interface ({host}), this agent found no address of its "
                f"own on the route to the master {control_address} ({exc}"
                f"{'; an IPv4 one is needed: listen on [::] for IPv6' if family else ''}); set "
                "advertise_host (--advertise-host) to the address other servers reach it at"
            ) from exc
        logger.info(
            "advertising %s to peers (the address on the route to the master; "
            "advertise_host overrides it)",
            chosen,
        )
    advertise = join_address(chosen, port)
    check_advertised(advertise)
    return advertise


def check_advertised(address: str) -> None:
    """Raise ConfigError if peers could not connect to `address`."""
    if why := address_problem(address):
        raise ConfigError(
            f"peer address {address!r} is not usable: {why}; set advertise_host "
            "(--advertise-host) to an address the other servers can connect to"
        )


def route_address(sockname: object, port: int, *, ipv4_only: bool = False) -> str:
    """The peer address for a control connection whose local end is `sockname` (the address its
    route to the master goes out from), or "" if that is no usable address (an IPv6 one for a
    peer server that takes IPv4 only: `ipv4_only`)."""
    if not isinstance(sockname, tuple) or not sockname:
        return ""
    host = str(sockname[0])
    with contextlib.suppress(ValueError):  # an IPv4 peer on a dual-stack socket: ::ffff:a.b.c.d
        host = str(ipaddress.IPv6Address(host).ipv4_mapped or host)
    if ipv4_only and ":" in host:
        return ""
    address = join_address(host, port)
    return "" if address_problem(address) else address

"""Cache drivers, one module per kind of cache, keyed by the name a site's cache entry uses."""

from __future__ import annotations

import httpx

from relaysync.errors import ConfigError
from relaysync.purge.drivers._base import Driver, Reply
from relaysync.purge.drivers.http import GenericHttp
from relaysync.purge.drivers.nginx import Nginx
from relaysync.purge.drivers.squid import Squid
from relaysync.purge.drivers.varnish import Varnish
from relaysync.purge.site import CacheSpec

DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (Varnish, Nginx, Squid, GenericHttp)}


def make_driver(cache: CacheSpec, client: httpx.AsyncClient) -> Driver:
    """Return the driver for `cache`.

    Raises:
        ConfigError: an unknown driver name.
    """
    try:
        return DRIVERS[cache.driver](cache, client)
    except KeyError:
        raise ConfigError(
            f"cache {cache.name!r}: unknown driver {cache.driver!r}; "
            f"use one of {', '.join(sorted(DRIVERS))}"
        ) from None


__all__ = ["DRIVERS", "Driver", "GenericHttp", "Nginx", "Reply", "Squid", "Varnish", "make_driver"]

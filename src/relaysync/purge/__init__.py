"""Cache synchronization: sites, URL mapping, cache drivers, the ordered purger and the listener."""

from relaysync.purge.site import CacheSpec, OriginSpec, SiteSpec

__all__ = ["CacheSpec", "OriginSpec", "SiteSpec"]

"""relaysync: real-time replication of a fleet of servers and the caches in front of them."""

__version__ = "0.1.0"

__all__ = ["__version__"]

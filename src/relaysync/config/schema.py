"""The configuration schema: one frozen Struct per process, with defaults and units.

Only a process's own settings live here (listen addresses, data dir, master URL, credentials).
Mappings, topology and policies live in the master's store. Every field is restart-required
for now; hot reload comes with the fields that need it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from relaysync.constants import HEARTBEAT_GRACE_S, METRICS_INTERVAL_S


class Secret(str):
    """A string whose value is hidden in repr and logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


class MasterConfig(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str
    listen: str = "127.0.0.1:8470"  # REST API and console, host:port (port 0 = any free port)
    # HTTPS of the REST API and console: "fleet" = a certificate from the fleet's CA (made and
    # renewed by the master), "files" = api_cert_file + api_key_file (e.g. one browsers trust),
    # "off" = plain HTTP, "auto" = "off" on a loopback listen address, else "fleet"
    api_tls: Literal["auto", "fleet", "files", "off"] = "auto"
    api_cert_file: str = ""  # PEM certificate (chain) for api_tls = "files"
    api_key_file: str = ""  # its PEM private key
    # more DNS names or IP addresses for the fleet certificate, comma-separated (besides the
    # listen host and this machine's host name): the names clients reach the master by
    api_names: str = ""
    # plain HTTP on an address other hosts reach: refused unless set (a TLS proxy in front)
    api_insecure_http: bool = False
    control_listen: str = "127.0.0.1:0"  # agents' control links (TLS), host:port (port 0: one
    # picked below the ephemeral range at the first start, then kept: agents hold it)
    database_url: str = ""  # empty = SQLite file in data_dir; or postgresql+psycopg://...
    purge_listen: str = (
        ""  # host:port of the purge listener for origins outside the fleet; "" = off
    )
    log_json: bool = False
    monitor_interval_s: float = 10.0  # probes, self-watch and threshold checks run this often
    # an agent not linked since the master started (or joined) is not alerted "control link
    # down" before this: after a restart the agents reconnect with backoff
    heartbeat_grace_s: Annotated[float, msgspec.Meta(ge=0)] = HEARTBEAT_GRACE_S
    metrics_raw_retention_s: float = 86_400.0  # raw agent figures kept this long (a day)...
    metrics_minute_retention_s: float = 30 * 86_400.0  # ...then one-minute averages this long


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    master_url: str  # http(s)://host:port of the master's REST API
    name: str
    data_dir: str
    token: str = (
        ""  # join string (token.ca-fingerprint); needed only until the agent holds a certificate
    )
    # SHA-256 of the fleet CA certificate, for a join token given without it (an older one);
    # the first join refuses a master whose CA has another
    ca_fingerprint: str = ""
    # join with a token that names no CA, trusting whichever master answers the first join:
    # only on a network where nobody can answer in the master's place
    insecure_first_join: bool = False
    # send the join token over plain http:// to a master on another host (in clear): only where
    # nobody can read the traffic; without it such a join is refused (use https://)
    allow_plain_http_join: bool = False
    # CA certificate(s) that issued the master's own API certificate (its api_tls = "files"),
    # for the first join; "" = none: the fleet's CA only (never certifi's or SSL_CERT_FILE).
    api_ca_file: str = ""
    region: str = "default"
    group: str = "default"
    listen: str = "127.0.0.1:0"  # peer server, host:port (port 0 = any free port)
    advertise_host: str = ""  # address peers use to reach this agent; default: the listen host
    compare_interval_s: float = 600.0  # manifests are compared this often, for convergence
    # A source folder is rescanned in full this often (0 = never), a safety net under inotify:
    # what the watcher missed (a kernel queue lost, a rename race) is found and sent.
    rescan_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    # A file a scan of a source folder finds modified this recently, and cannot tell complete
    # (still open for writing, empty, or no read lease may be taken on it), is held until its
    # close-write or until it has stayed untouched this long.
    hot_file_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 1.0
    # compression of file data on this agent's links (0 = off; zstd's levels go to 19); a policy wins
    zstd_level: Annotated[int, msgspec.Meta(ge=0, le=19)] = 0
    bandwidth_limit_mbit: Annotated[float, msgspec.Meta(ge=0)] = (
        0.0  # per outgoing link, Mbit/s (0 = unlimited)
    )
    log_json: bool = False
    metrics_interval_s: float = (
        METRICS_INTERVAL_S  # server figures are sent to the master this often
    )
    metrics_listen: str = ""  # host:port for Prometheus /metrics of this agent; empty = off
    # Peer names whose sessions this agent refuses, comma-separated: a firewall rule between
    # two servers, for drills and tests of the bypass routes. Empty in production.
    refuse_peers: str = ""
    # Optional message kinds this agent's peer server and control link announce
    # (constants.CAPABILITIES), comma-separated; "*" = all this release has. Fewer makes it act
    # as an older release, for drills and tests of a fleet upgraded one server at a time. "*"
    # in production.
    capabilities: str = "*"
    # Folders under which this agent accepts source and target folders, comma-separated
    # (e.g. "/srv,/var/www"); "" = anywhere but system folders and its own data directory
    # (agent/guard.py). A folder outside them is refused, whatever the master assigns.
    allowed_roots: str = ""
    # Symlinks this agent's target folders take when their mapping does not say (its symlink
    # policy ""): "safe" refuses one that points outside the folder (rsync --safe-links),
    # "any" takes them all (watch/target_policy.py).
    target_symlinks: Literal["safe", "any"] = "safe"
    # What the commit reports the master has not taken may weigh on disk (agent/outbox.py), in
    # MiB: past it, with the master down for long, the oldest are dropped (logged as errors,
    # counted by commit_reports_dropped; their URLs are not purged) rather than fill the disk.
    report_outbox_max_mb: Annotated[int, msgspec.Meta(ge=64)] = 4096


class CliConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the operator commands find the master: RELAYSYNC_MASTER, _TOKEN, _MASTER_DATA."""

    master: str = (
        ""  # http(s)://host:port of the master's REST API; "" = read master_data's master.json
    )
    token: str = ""  # admin or API token; "" = master_data's admin-token
    # CA certificate(s) to check an https master with; "" = master_data's fleet CA (for a
    # master with api_tls = "fleet"), else SSL_CERT_FILE / SSL_CERT_DIR, else certifi's bundle
    ca_file: str = ""
    master_data: str = ""  # a master's data directory on this host (the local configuration)


Durability = Literal["safe", "fast"]

"""Limits, intervals and timeouts shared by the parts of relaysync, each with its unit and reason."""

# Bumped on any incompatible change to the wire messages (protocol/messages.py and what it imports).
PROTOCOL_VERSION = 1
# Optional message kinds a node can take, announced in its Hello; a sender uses one only with a
# peer that announced it, so nodes of one protocol version but different releases interoperate.
CAP_SMALL_FILE = "small_file"  # SmallFile: a file of at most SMALL_FILE_BYTES in one message
CAP_RENAME_RESEND = "rename_resend"  # a sender that resends a rename's new path whole when the target lacks its source
# Control link: an agent that keeps its commit reports until the master says they are taken
# (ReportsTaken), and a master that says so; either side without it sends and forgets.
CAP_REPORT_ACK = "report_ack"
# SourceUnreadable: the source's paths there but unreadable now, which a relay keeps on its children
CAP_UNREADABLE = "unreadable_paths"
# Control link: a master that takes MassDeleteEnded and MassDeleteHeld.resent (the end of a hold,
# and a hold told again at each session); an agent sends them only to such a master.
CAP_HOLD_END = "hold_end"
CAPABILITIES = (CAP_SMALL_FILE, CAP_RENAME_RESEND, CAP_REPORT_ACK, CAP_UNREADABLE, CAP_HOLD_END)
MAX_CAPABILITIES = 64  # a Hello announcing more is hostile

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a chunk (1 MiB) plus headroom; anything larger is hostile
# Connections to a peer server that have not authenticated yet (TLS handshake, or a plain link's
# challenge): beyond this many at once, a new one is closed at accept. Each lasts at most about
# CONNECT_TIMEOUT_S + 2 * HANDSHAKE_TIMEOUT_S; a fleet's sources reconnecting at once stay far below.
MAX_UNAUTHENTICATED = 256
# Of those, from one source address: one host cannot take the whole cap and lock every other
# peer out. 64, not fewer: a source's links to this server (one per mapping) reconnect at once
# after a restart, and one closed at accept twice counts as a failed hop for the master; beyond
# 64 they are closed and retried (0.2 s, 0.4 s...) as the first ones get in.
MAX_UNAUTHENTICATED_PER_ADDRESS = 64
# The master's control port (4096 in all, protocol/connection.py ACCEPT_BACKLOG): a site's agents
# behind one NAT address reconnect at once after a master restart, one connection each.
MASTER_UNAUTHENTICATED_PER_ADDRESS = 256
PREAUTH_MAX_MESSAGE_BYTES = (
    64 * 1024
)  # a plain link's frames until it authenticated (Hello, OpenMapping)
CHUNK_BYTES = 1024 * 1024  # file data travels in frames of at most this many bytes
SMALL_FILE_BYTES = 64 * 1024  # files up to this size travel whole in one frame (SmallFile)
MAX_PATH_BYTES = 4096  # Linux PATH_MAX; longer paths on the wire are refused
MAX_NAME_BYTES = 255  # Linux NAME_MAX
# Components of a path a target takes at most (check_relpath): far beyond any real tree, and every
# walk, creation and removal of directories stays iterative anyway (a recursion in Python fails at
# a depth of about 1,000).
MAX_PATH_DEPTH = 255

CONNECT_TIMEOUT_S = 10.0  # TCP connect plus TLS handshake to a peer or the master
HANDSHAKE_TIMEOUT_S = 10.0  # the Hello exchange after TLS is up
RECEIVE_TIMEOUT_S = (
    60.0  # drop a peer that sent nothing for this long (it pings every PING_INTERVAL_S)
)
PING_INTERVAL_S = 10.0  # keep an idle link alive well inside the peer's RECEIVE_TIMEOUT_S
CLOSE_TIMEOUT_S = 2.0  # shielded cleanup on cancellation
# A graceful stop of the master (master/control.py ControlServer.stop): the job log's last flush
# (a locked SQLite waits SQLITE_BUSY_TIMEOUT_MS, 10 s), then the last acknowledgements to agents.
MASTER_STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0  # REST calls between agent/CLI and master
# The master's REST API reads at most this much of a request body, before any token check or
# parsing: anything larger is refused with 413 (the largest real bodies, sites with many caches
# and mappings with many targets, are tens of KiB).
API_MAX_BODY_BYTES = 2 * 1024 * 1024
API_JOIN_MAX_BODY_BYTES = 8 * 1024  # POST /api/join: a token, a name and a CSR (under 2 KiB)
# An agent sends its server figures this often (AgentConfig.metrics_interval_s's default); the
# master raises "no data" for an agent silent for NO_DATA_AFTER_REPORTS times this or its own gap.
METRICS_INTERVAL_S = 10.0
# A source that begins or stops failing sends the figures at once, this long after the last at
# the soonest (a source failing again and again cannot flood the master with reports).
EARLY_REPORT_GAP_S = 1.0
# A server not linked since the master started, or since it joined, has this long to link before
# its heartbeat alert counts (MasterConfig.heartbeat_grace_s): agents reconnect with backoff after
# a master restart, and a new one links after its join; each was alerted and used up its notices.
HEARTBEAT_GRACE_S = 30.0

RECONNECT_MIN_S = 0.2  # first retry after a lost link
RECONNECT_MAX_S = 10.0  # backoff ceiling for lost links
# A target that runs another routing epoch (ROUTES_STALE) gets the newer table within moments:
# its refusals are retried at most this far apart, and are no failed hop (no HopFailed).
ROUTES_STALE_RETRY_MAX_S = 2.0
# The first retry of such a refusal: a new mapping's source may dial a target whose assignment is
# a few ms behind its own; the wait then doubles (20, 40, 80 ms ...) up to the cap above.
ROUTES_STALE_FIRST_RETRY_S = 0.02
ROUTES_STALE_LIMIT_S = 60.0  # refusals of a route change in flight for longer: a failed hop
# ... after which the target is asked again ever more seldom, up to this (a target that never
# settles, e.g. refusing a revoked source, is not asked every few seconds for ever), and the
# refusals are logged once, then with their count at most this often.
ROUTES_STALE_BACKOFF_MAX_S = 60.0
ROUTES_STALE_LOG_INTERVAL_S = 600.0
# A link's failed sessions in a row logged each as a warning; past them (a target down for long:
# one every RECONNECT_MAX_S) at most one line this often, with their count.
LINK_DOWN_WARNINGS = 6
LINK_DOWN_LOG_INTERVAL_S = 600.0
REFUSED_RETRY_S = (
    300.0  # an agent the master refused (removed from the fleet) asks again this seldom
)
# ... but a certificate the master refused that is not expired by the agent's own clock (not yet
# valid, or current here) is a clock behind, the agent's or the master's: once NTP sets it right,
# the agent is back within this.
CERT_CLOCK_RETRY_S = 30.0
# An agent's commit reports waiting on disk (past the queue's memory bound) whose read back failed
# (EMFILE, EIO) while none is held in memory: no acknowledgement comes to try it again, so the
# control link's writer does, this often (agent/report_queue.py `stalled`).
READ_BACK_RETRY_S = 5.0
SOURCE_RETRY_MIN_S = 1.0  # first restart of a source mapping that failed (its folder, its state)
SOURCE_RETRY_MAX_S = 60.0  # backoff ceiling: each restart opens its state and rescans its folder
# An agent task that failed unexpectedly (a bug, not a lost link: those reconnect by themselves) is
# started again after this, doubling up to the ceiling; a run as long as the ceiling was healthy.
TASK_RETRY_MIN_S = 1.0
# A source file that is there but cannot be read (permissions, EIO, EMFILE) is read again after
# this, doubling up to the ceiling: a fixed cause is picked up within a minute, and a file that
# stays unreadable costs one warning (and one failed attempt in the job log) a minute.
UNREADABLE_RETRY_MIN_S = 1.0
UNREADABLE_RETRY_MAX_S = 60.0
# A file read to be sent that is not the version its record journaled (caught mid-rewrite, or
# changed while read) is not committed: it is read again under the same seq (transfer/
# unreadable.py), with the same backoff, until it is that version or a later record of it goes.
# After this many such reads of the path (by its records or retries: about 30 s without a record)
# the next goes as it is, with a warning: a file written all the time goes now and then.
UNSETTLED_READS = 6
TASK_RETRY_MAX_S = 60.0  # a bug that recurs at once logs one traceback a minute, not a flood

# The common name of the master's control certificate. No agent may join under it (auth/ca.py),
# so an agent whose master.json predates the pinned `master_node_id` can tell the master from
# another agent of the fleet on its first contact, and pins its fingerprint from then on.
MASTER_NODE_NAME = "relaysync-master"
# The server name the master's own figures go under in monitoring (thresholds, /metrics): no
# agent may join under it either, or its figures would replace the master's and escape the
# fleet-wide rules (auth/ca.py).
MASTER_MONITOR_NAME = "master"

JOB_LOG_FLUSH_INTERVAL_S = 0.5  # the master writes the job log in batches, off the change path
FSYNC_BATCH_MAX_FILES = 256  # a receiver fsyncs and renames at most this many files per batch

PERIODIC_COMPARE_S = 600.0  # source and target compare manifests this often, for convergence
UNWATCHED_SCAN_INTERVAL_S = 30.0  # trees beyond the inotify watch limit are scanned this often

TEMP_PREFIX = ".relaysync."  # temporary files on targets; scanners ignore names with this prefix

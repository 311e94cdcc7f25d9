"""The error tree of relaysync: every error a user or a peer can meet.

Each class's docstring is its message template, formatted with the positional arguments, and
`exit_code` is the CLI's exit status for it.

    RelaySyncError
    ├── ConfigError                    bad configuration or command-line input
    │   ├── FolderRefused              an agent refuses a folder it was assigned (system, its data, not allowed)
    │   ├── PlainApiRefused            the master's API in plain HTTP on an address other hosts reach
    │   ├── DataDirInUse               another master or agent process holds the data directory's lock
    │   ├── DatabaseInUse              another master holds the database's master lock (exit 21 too)
    │   │   └── DatabaseTakenOver      another master took it while this one's lock connection was down
    │   └── CannotListen               a listen address that cannot be bound (in use, not this host's)
    │       └── ControlPortTaken       the control port remembered from the last run is in use
    ├── ProtocolError                  a malformed, oversize or unexpected message
    │   ├── FrameTooLarge
    │   ├── IncompatibleVersion
    │   └── PeerRefused                the peer answered with an Error message
    │       └── SendWhole              a target lacks the version a change builds on: sent whole next
    ├── UnsafePath                     a path on the wire that is absolute, has .., NUL, or escapes the root
    ├── SourceReadError                a source file that is there but cannot be read (EACCES, EIO, EMFILE...)
    │   └── SourceListError            a source directory that is there but cannot be listed or entered
    ├── AuthError                      identity and certificates
    │   ├── JoinRefused                a bad or expired join token
    │   ├── MasterNotTrusted           a first join answered with another CA than the join string names
    │   ├── JoinAnswerRefused          a first join's answer that is malformed (several CAs, a field missing)
    │   ├── CsrRefused                 the master cannot sign a joining agent's certificate request
    │   ├── IdentityUnusable           an agent's saved identity that is incomplete or trusts several CAs
    │   ├── UnknownPeer                a certificate the receiver does not expect
    │   │   └── RoutesStale            a sender that is not our parent in our routing table's epoch
    │   ├── NodeRemoved                a node the master does not know, or removed from the fleet
    │   ├── CertificateExpired         a node certificate (ours or a peer's) past its not-after date
    │   ├── CertificateNotYetValid     a node certificate before its not-before date (a clock behind)
    │   ├── ForeignCertificate         a peer's certificate not signed by this fleet's CA
    │   ├── CertificateRefused         a peer refused this node's certificate, and said why
    │   ├── ApiCertificateRefused      the master's HTTPS API presented a certificate this side does not trust
    │   └── TLSHandshakeFailed
    ├── TransferError                  moving bytes between agents
    │   ├── HashMismatch               received bytes do not match the announced hash
    │   ├── SourceChanged              the source file changed while it was being read
    │   ├── LinkDown                   a peer could not be reached or dropped the link
    │   ├── SpoolReset                 a relay's parent stream broke mid-file: its children start again
    │   └── DeltaBaseUnreadable        a target cannot open or read the version a delta applies to
    ├── WatchError                     content monitoring
    │   ├── WatchLimitReached          the kernel's inotify watch limit is too low
    │   ├── NameNotUtf8                a file or directory name that is not valid UTF-8
    │   ├── LinkTargetNotUtf8          a symlink whose target is not valid UTF-8
    │   ├── PathTooDeep                a path longer below its folder than the wire carries
    │   ├── JournalCorrupt
    │   └── JournalGap                 a read from below what the journal still holds (released)
    ├── StoreError                     the master's store
    │   └── NotFound
    ├── PurgeError                     cache synchronization
    │   ├── ForeignUrl                 a URL that does not belong to the site it was sent for
    │   ├── CacheMisconfigured         a cache's configuration (ours or its own) is wrong: kept, probed
    │   │   └── CacheRefused           a cache refused a purge (403/405): its ACL is wrong
    │   ├── VariantBanRefused          a cache refused a query-string variant's ban (a VCL without BAN)
    │   ├── CacheUnreachable           a cache did not connect or answer (its circuit breaker counts it)
    │   ├── NoticeRefused              a listener notice with bad credentials, time or nonce
    │   ├── StaleCopy                  a cache still serves other bytes than the origin after a purge
    │   └── PrefixNotExpandable        a prefix purge on caches without bans, with no paths known under it
    ├── MonitorError                   server monitoring
    │   └── AlertDeliveryFailed        an alert channel could not deliver a notification
    └── MasterUnreachable              the master's API or control port does not answer
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Self


class RelaySyncError(Exception):
    """relaysync error: {}"""

    exit_code = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.args = args

    def __str__(self) -> str:
        template = (type(self).__doc__ or "{}").strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError, ValueError):
            return f"{template} {self.args!r}"


def error_text(exc: BaseException) -> str:
    """What an exception says, or its type's name if it says nothing (a reset connection, an
    EndOfStream): an exception object is always true, so `exc or name` printed "" instead."""
    return str(exc) or type(exc).__name__


class ConfigError(RelaySyncError):
    """Configuration error: {}"""

    exit_code = 2


class FolderRefused(ConfigError):
    """{} folder {} of mapping {} is refused by this agent: {}."""


class PlainApiRefused(ConfigError):
    """The master's REST API would listen on {} in plain HTTP, where admin and join tokens cross the network in clear: set api_tls = "auto" or "fleet" (HTTPS with a certificate from the fleet's CA), or "files" with api_cert_file and api_key_file (your own), or api_insecure_http = true if something in front of it gives TLS."""

    exit_code = 20


class DataDirInUse(ConfigError):
    """another {} is using {}; stop it first, or give this {} its own --data

    Two processes on one data directory would share its store or journals and overwrite each
    other's files (master.json, control-port): the second one exits before it touches any.
    """

    exit_code = 21


class DatabaseInUse(ConfigError):
    """another {} is using database {}; run one master per database: stop it first, or give this master its own database_url

    Two masters on one store would both route, purge, prune and write the job log: double
    purges, routing epochs fighting. Exit 21 as DataDirInUse: another process holds what this
    one needs, and a restart does not help until it stops (systemd RestartPreventExitStatus=21).
    """

    exit_code = 21


class DatabaseTakenOver(DatabaseInUse):
    """another {} took database {} while this master's lock connection was down; this master stops: run one master per database"""


class CannotListen(ConfigError):
    """Cannot listen on {}: {}; choose another with {}."""

    @classmethod
    def of(cls, address: str, exc: OSError, option: str) -> Self:
        """The error for `exc`, raised binding `address` (host:port), which `option` sets."""
        return cls(address, _bind_problem(exc), option)


class ControlPortTaken(CannotListen):
    """Cannot listen on {}: {}; this control port was remembered in {} from the last run, because every joined agent saved it at its join and connects there: free it and start the master again (--control-listen HOST:PORT takes another, but then each joined agent's DATA/identity/master.json must get it as its control_address)."""


def _bind_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another relaysync, or another program? see ss -ltnp)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available (not an address of this host)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    if isinstance(exc, socket.gaierror):
        return f"the host does not resolve ({exc.strerror or exc})"
    return (exc.strerror or str(exc)).lower()


class ProtocolError(RelaySyncError):
    """Protocol error: {}"""

    exit_code = 10


class FrameTooLarge(ProtocolError):
    """Frame of {} bytes is over the limit of {} bytes; the connection is closed."""


class IncompatibleVersion(ProtocolError):
    """Peer speaks protocol version {}, this node speaks {}: upgrade the older side."""


class PeerRefused(ProtocolError):
    """Peer refused: {} ({})."""


class SendWhole(PeerRefused):
    """Peer refused: {} ({}); the change goes whole at once."""


class UnsafePath(RelaySyncError):
    """Refused unsafe path {!r}: {}."""

    exit_code = 11


class SourceReadError(RelaySyncError):
    """Cannot read {!r} on the source: {}. {} relaysync retries it until it can.

    Not "gone": the file is there (a gone file, or one that is no longer a regular file, has a
    later record of its own). The change is kept and retried, never skipped as if deleted.
    """

    exit_code = 19

    @classmethod
    def of(cls, path: str, exc: OSError) -> Self:
        """The error for `exc`, raised reading the source file `path`, with what to do about it."""
        err = cls(path or ".", exc.strerror or str(exc), cls._hint(exc.errno))
        err.code = exc.errno
        err.path = path
        return err

    code: int | None = None  # the errno
    path: str = ""  # relative to the source folder ("" is the folder itself), as `of` gave it

    def bare(self) -> Self:
        """This error without its traceback and the OSError behind it, to be held in numbers (a
        scan of a million unreadable files): what it says is kept, ~5x less memory."""
        self.__cause__ = self.__context__ = None
        return self.with_traceback(None)

    @staticmethod
    def _hint(code: int | None) -> str:
        return _read_hint(code)


class SourceListError(SourceReadError):
    """Cannot list directory {!r} on the source: {}. {} relaysync scans it again until it can.

    Not "empty": nothing below it is taken for changed or deleted (the manifest and the targets
    keep what they have) until it can be listed again; then what changed meanwhile is journaled.
    """

    @staticmethod
    def _hint(code: int | None) -> str:
        if code in (errno.EACCES, errno.EPERM):
            return "Fix its permissions: the agent's user must be able to read and enter it (r-x)."
        return _read_hint(code)


def _read_hint(code: int | None) -> str:
    if code in (errno.EACCES, errno.EPERM):
        return "Fix its permissions: the agent's user must be able to read it."
    if code in (errno.EMFILE, errno.ENFILE):
        return "Raise the agent's open-file limit (LimitNOFILE, ulimit -n, fs.file-max)."
    if code in (errno.ENOMEM, errno.ENOBUFS):
        return "The source server is short of memory."
    return "Check the source's disk and file system."


class AuthError(RelaySyncError):
    """Authentication error: {}"""

    exit_code = 12


class JoinRefused(AuthError):
    """The master refused to let this agent join: {}. Ask the operator for a fresh join token."""


class MasterNotTrusted(AuthError):
    """The master at {} is not the one this agent was told to join: its CA's fingerprint is {}, the join string (or --ca-fingerprint) says {}. Nothing was saved. Check --master (someone else may be answering on the way), or ask the operator for a current join string (`relaysync token create-join`, or the master's data_dir/join-token)."""


class JoinAnswerRefused(AuthError):
    """The join answer from {} cannot be used: {}. Nothing was saved. Check --master (someone on the way may be altering the answer) and that the master runs a current relaysync release."""


class CsrRefused(AuthError):
    """The master at {} refused this agent's certificate request: {}. Its join token was good and nothing was saved: the agent and the master may run releases too far apart (upgrade the older one); otherwise report it as a bug."""


class IdentityUnusable(AuthError):
    """This agent's identity in {0} cannot be used: {1}. Stop the agent, delete {0} and start it again with --token <a join string> (`relaysync token create-join`, or the master's data_dir/join-token) to join the fleet anew."""


class UnknownPeer(AuthError):
    """Connection from unknown node {} refused: it is not a peer of this node."""


class RoutesStale(UnknownPeer):
    """Routing tables disagree on mapping {}: {}; the newer table reaches both nodes shortly.

    Not a failed hop: the sender retries without telling the master.
    """


class NodeRemoved(AuthError):
    """Node {} is not in the fleet ({}): it must join again with a new join token."""


class CertificateExpired(AuthError):
    """The certificate of {} expired on {}: {}."""


class CertificateNotYetValid(AuthError):
    """The certificate of {} is not valid before {}: check the clocks of this server and of the master (NTP)."""


class ForeignCertificate(AuthError):
    """{} presented a certificate not signed by this fleet's CA ({}): it belongs to another fleet, or was made by another master's CA. Join that node to this fleet with a join token from this master, or correct the address it was given."""


class CertificateRefused(AuthError):
    """{} refused this node's certificate: {}"""


class ApiCertificateRefused(AuthError):
    """The master's API at {} presented a certificate that is not trusted here ({}): {}"""


class TLSHandshakeFailed(AuthError):
    """TLS handshake failed: {}"""


class TransferError(RelaySyncError):
    """Transfer error: {}"""

    exit_code = 13


class HashMismatch(TransferError):
    """Content of {!r} does not match its announced hash; it was not committed and will be re-sent."""


class SourceChanged(TransferError):
    """Source file {!r} changed while it was being read; the newer version follows."""


class LinkDown(TransferError):
    """Link to {} is down: {}. Will retry."""


class SpoolReset(TransferError):
    """The relay's spool was cut back under a reader ({}); its session starts again."""


class DeltaBaseUnreadable(TransferError):
    """The delta's base {!r} cannot be opened or read on this target: {}; the whole file is sent instead."""


class WatchError(RelaySyncError):
    """Watch error: {}"""

    exit_code = 14


class WatchLimitReached(WatchError):
    """inotify watch limit reached under {} ({} watches); scanning it every {} s instead. Raise it with: sysctl fs.inotify.max_user_watches=524288"""


class NameNotUtf8(WatchError):
    """The name of {} is not valid UTF-8, so it is not replicated{}. Rename it: relaysync replicates UTF-8 names only."""


class LinkTargetNotUtf8(WatchError):
    """The target of symlink {} is not valid UTF-8, so the link is not replicated. Point it at a UTF-8 name: relaysync replicates UTF-8 names only."""


class PathTooDeep(WatchError):
    """{} is over {} bytes below its folder, more than a path may have on the wire, so it is not replicated{}. Move it nearer the folder or shorten the names on its way."""


class JournalCorrupt(WatchError):
    """Journal {} is corrupt at offset {}: {}"""


class JournalGap(WatchError):
    """Journal {}: records after seq {} are asked for, but it holds only those after seq {} (the
    rest were released): a reader there must catch up some other way (a comparison)."""


class StoreError(RelaySyncError):
    """Store error: {}"""

    exit_code = 15


class NotFound(StoreError):
    """{} {!r} not found."""


class UnknownServer(NotFound):
    """The {} server {!r} of the mapping is not known to the master (servers: {}); a server is known once its agent has joined under that --name."""


class PurgeError(RelaySyncError):
    """Purge error: {}"""

    exit_code = 17


class ForeignUrl(PurgeError):
    """URL {!r} does not belong to site {!r}: {}."""


class CacheMisconfigured(PurgeError):
    """Cache {!r}: {}."""


class CacheRefused(CacheMisconfigured):
    """Cache {!r} refused {} with HTTP {}: {}."""


class VariantBanRefused(PurgeError):
    """Cache {!r} refused {} with HTTP {}: {}."""


class CacheUnreachable(PurgeError):
    """Cache {!r}: {} got no answer: {}."""

    def __init__(self, *args: Any, timeout_s: float | None = None) -> None:
        super().__init__(*args)
        self.timeout_s = timeout_s  # the timeout that expired; None: refused, reset, ...


class NoticeRefused(PurgeError):
    """Purge notice refused: {}."""


class StaleCopy(PurgeError):
    """Cache {!r}: {} serves {}, the origin {}."""


class PrefixNotExpandable(PurgeError):
    """Site {!r} cannot purge the prefix {!r}: {}."""


class MasterUnreachable(RelaySyncError):
    """The master at {} does not answer: {}. Is `relaysync master` running there?"""

    exit_code = 16


class MonitorError(RelaySyncError):
    """Monitoring error: {}"""

    exit_code = 18


class AlertDeliveryFailed(MonitorError):
    """Alert channel {!r} could not deliver: {}"""


class RouteError(ConfigError):
    """Invalid manual route: {}

    Raised by routing/manual.py when an operator's route cannot be used as given: an unknown
    server, a loop, a server reached twice or not at all, or a relay that is not a target.
    """

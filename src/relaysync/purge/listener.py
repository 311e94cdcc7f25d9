"""The purge listener: a TCP endpoint where origins outside the fleet (NFS, a CMS on another
host) tell the master that content changed, as length-prefixed msgpack `PurgeNotice` frames.

Each notice is authenticated with its site's secret (HMAC-SHA256 over PurgeNotice.canonical()),
must be recent (NOTICE_SKEW_S) and carry a nonce not seen within the window, and its URL or
path must belong to the site. Anything else gets an `Error` back and purges nothing; so does a
prefix that no cache of the site can purge (PREFIX_NOT_EXPANDABLE: no bans, and no mapping
whose job log lists the paths under it), and a store error (IO_ERROR: send it again).

Error handling:
    A refused notice is answered with Error(code, detail) and the connection stays open; a
    frame that is oversize or undecodable is answered with Error(BAD_MESSAGE) and the
    connection is closed (the byte stream can no longer be trusted).
Resource handling:
    One task per connection; a connection silent for RECEIVE_TIMEOUT_S is closed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from relaysync.constants import CLOSE_TIMEOUT_S
from relaysync.errors import (
    ForeignUrl,
    NoticeRefused,
    PrefixNotExpandable,
    ProtocolError,
    StoreError,
    UnsafePath,
)
from relaysync.protocol.connection import open_framed, serve_framed, wrap_accepted
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import Error, ErrorCode, PurgeAccepted, PurgeNotice
from relaysync.purge import urls as urlmap
from relaysync.purge.purger import Purger
from relaysync.purge.site import SiteSpec

logger = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 16 * 1024  # a notice is a URL and a few short fields; more is hostile
NOTICE_SKEW_S = 300.0  # a notice signed further from the master's clock than this is refused
RECEIVE_TIMEOUT_S = 60.0  # an idle connection is closed
MAX_NONCES = 100_000  # nonces remembered for replay checks, over every site


def sign(notice: PurgeNotice, secret: str) -> str:
    """Return the hex HMAC of `notice` under `secret`."""
    return hmac.new(secret.encode(), notice.canonical(), hashlib.sha256).hexdigest()


def make_notice(
    site: str,
    secret: str,
    url_or_path: str,
    kind: str = "url",
    *,
    at: float | None = None,
    nonce: str | None = None,
) -> PurgeNotice:
    """Return a signed notice (what an origin's agent or CMS hook sends)."""
    unsigned = PurgeNotice(
        site=site,
        url_or_path=url_or_path,
        kind=kind,  # type: ignore[arg-type]
        nonce=nonce or secrets.token_hex(16),
        time=time.time() if at is None else at,
        hmac="0" * 64,
    )
    return PurgeNotice(
        site=unsigned.site,
        url_or_path=unsigned.url_or_path,
        kind=unsigned.kind,
        nonce=unsigned.nonce,
        time=unsigned.time,
        hmac=sign(unsigned, secret),
    )


class PurgeListener:
    """Accepts purge notices and hands the URLs they name to the purger."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        purger: Purger,
        sites: Callable[[str], SiteSpec | None],
        skew_s: float = NOTICE_SKEW_S,
    ) -> None:
        self.host, self.port = host, port
        self.purger = purger
        self.sites = sites
        self.skew_s = skew_s
        self._nonces: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.accepted = 0
        self.refused = 0

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                partial(serve_framed, self.host, self.port, self._accept, option="--purge-listen")
            )
            logger.info("purge listener on %s:%s", self.host, port)
            task_status.started(port)

    async def _accept(self, sock: socket.socket, remote: str) -> None:
        try:
            framed = await wrap_accepted(sock, max_message_bytes=MAX_NOTICE_BYTES)
        except (OSError, TimeoutError) as exc:  # the loop owns the socket now: it closes it
            logger.info("purge listener: client %s gone before it was served: %s", remote, exc)
            return
        await self._handle(framed)

    async def _handle(self, framed: FramedStream) -> None:
        try:
            while True:
                try:
                    with anyio.fail_after(RECEIVE_TIMEOUT_S):
                        message = await framed.receive()
                except ProtocolError as exc:  # oversize, undecodable or invalid: close
                    self.refused += 1
                    logger.warning("purge listener: bad frame, closing: %s", exc)
                    await framed.send(Error(code=ErrorCode.BAD_MESSAGE, detail=str(exc)))
                    return
                await framed.send(await self._answer(message))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            TimeoutError,
            OSError,
        ):
            return
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    async def _answer(self, message: object) -> Error | PurgeAccepted:
        if not isinstance(message, PurgeNotice):
            self.refused += 1
            return Error(
                code=ErrorCode.NOT_EXPECTED,
                detail=f"expected purge_notice, got {type(message).__name__}",
            )
        try:
            site = self._authenticate(message)
            items = await self._submit(site, message)
        except NoticeRefused as exc:
            return self._refuse(message, ErrorCode.NOT_AUTHORIZED, str(exc))
        except ForeignUrl as exc:
            return self._refuse(message, ErrorCode.FOREIGN_URL, str(exc))
        except UnsafePath as exc:
            return self._refuse(message, ErrorCode.UNSAFE_PATH, str(exc))
        except PrefixNotExpandable as exc:
            return self._refuse(message, ErrorCode.PREFIX_NOT_EXPANDABLE, str(exc))
        except StoreError as exc:  # transient: the same notice may be sent again
            self._nonces.pop((message.site, message.nonce), None)
            return self._refuse(message, ErrorCode.IO_ERROR, f"try again: {exc}")
        self.accepted += 1
        return PurgeAccepted(nonce=message.nonce, items=items)

    def _refuse(self, notice: PurgeNotice, code: ErrorCode, detail: str) -> Error:
        self.refused += 1
        logger.warning(
            "purge notice refused: site=%s code=%s: %s", notice.site[:64], code.name, detail
        )
        return Error(code=code, detail=detail)

    def _authenticate(self, notice: PurgeNotice) -> SiteSpec:
        """Check site, HMAC, time and nonce, in that order (nothing is learnt before the HMAC).

        Raises:
            NoticeRefused: any of them fails.
        """
        site = self.sites(notice.site)
        expected = sign(notice, site.secret if site else secrets.token_hex(32))
        if site is None or not hmac.compare_digest(expected, notice.hmac.lower()):
            raise NoticeRefused(f"bad credentials for site {notice.site[:64]!r}")
        now = time.time()
        if abs(now - notice.time) > self.skew_s:
            raise NoticeRefused(
                f"signed {now - notice.time:+.0f} s from the master's clock "
                f"(allowed: {self.skew_s:.0f} s)"
            )
        key = (site.name, notice.nonce)
        self._expire_nonces(now)
        if key in self._nonces:
            raise NoticeRefused("nonce already used: a replayed notice")
        self._nonces[key] = now + 2 * self.skew_s
        return site

    def _expire_nonces(self, now: float) -> None:
        while self._nonces:
            key, expires = next(iter(self._nonces.items()))
            if expires > now and len(self._nonces) < MAX_NONCES:
                break
            del self._nonces[key]

    async def _submit(self, site: SiteSpec, notice: PurgeNotice) -> int:
        if notice.kind == "url":
            url = urlmap.parse_url(urlmap.normalise_url(site, notice.url_or_path))
            same = [f"{scheme}://{host}{url.target}" for scheme, host in urlmap.site_hosts(site)]
            return await self.purger.submit(site, same)
        rel = urlmap.normalise_path(site, notice.url_or_path)
        if notice.kind == "prefix":
            return await self.purger.submit_prefix(site, rel)
        return await self.purger.submit(  # a file: its query-string variants too
            site, urlmap.urls_for_path(site, urlmap.mapping_path(site, rel)), variants=True
        )


async def send_notice(
    host: str, port: int, notice: PurgeNotice, *, timeout_s: float = 10.0
) -> Error | PurgeAccepted:
    """Send one notice to a listener and return its answer (a client for origins and tests)."""
    with anyio.fail_after(timeout_s):
        framed = await open_framed(host, port)
        try:
            await framed.send(notice)
            answer = await framed.receive()
        finally:
            await framed.aclose()
    if not isinstance(answer, Error | PurgeAccepted):
        raise ProtocolError(f"purge listener answered {type(answer).__name__}")
    return answer

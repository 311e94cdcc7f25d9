"""Purge-listener messages (an origin outside the fleet -> the master): signed purge notices."""

from __future__ import annotations

from typing import Literal

from relaysync.constants import MAX_NAME_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol._message_base import Message, UInt63, UnixTime

# --- Purge listener ---

MAX_NOTICE_URL_BYTES = 8192  # caches refuse longer request lines anyway
PURGE_NOTICE_CONTEXT = b"relaysync-purge-notice-v1"


class PurgeNotice(Message, frozen=True, tag="purge_notice"):
    """An origin outside the fleet -> the master's purge listener: this URL or path changed.

    `hmac` is the hex HMAC-SHA256, keyed with the site's secret, of canonical().
    """

    site: str
    url_or_path: str
    kind: Literal["url", "path", "prefix"]  # a full URL; a path under the site root; a directory
    nonce: str  # unique per notice; a repeat within the time window is refused
    time: UnixTime  # unix time when signed
    hmac: str

    def canonical(self) -> bytes:
        """The bytes the HMAC covers: every field but the HMAC, unambiguously joined."""
        fields = (self.site, self.kind, self.url_or_path, self.nonce, repr(float(self.time)))
        return PURGE_NOTICE_CONTEXT + b"".join(
            b"\n" + str(len(f.encode())).encode() + b":" + f.encode() for f in fields
        )

    def validate(self) -> None:
        if not self.site or len(self.site) > MAX_NAME_BYTES:
            raise ProtocolError("purge_notice: site name empty or too long")
        if (
            not self.url_or_path
            or len(self.url_or_path.encode("utf-8", "surrogateescape")) > MAX_NOTICE_URL_BYTES
        ):
            raise ProtocolError(
                f"purge_notice: url_or_path empty or over {MAX_NOTICE_URL_BYTES} bytes"
            )
        if not 8 <= len(self.nonce) <= 64 or len(self.hmac) != 64:
            raise ProtocolError(
                "purge_notice: nonce must be 8-64 characters and hmac 64 hex digits"
            )


class PurgeAccepted(Message, frozen=True, tag="purge_accepted"):
    """Listener -> origin: the notice was checked and `items` purges are queued."""

    nonce: str
    items: UInt63

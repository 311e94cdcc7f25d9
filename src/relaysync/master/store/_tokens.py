"""Join and API tokens: only their SHA-256 hashes are kept (mixed into Store).

A join token is listed under the first JOIN_TOKEN_ID_CHARS hex characters of its hash (more
where two tokens share them), an API token under its row id. Revoking deletes the row, so the
check_* methods refuse the token from the next call on. Expired join tokens are kept, listed
as expired, until revoked: an operator sees what a failed join was given.

Error handling: bad input raises ConfigError, an unknown id NotFound; database failures raise
StoreError.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.auth.tokens import TokenScope, hash_token, new_api_token, new_join_token
from relaysync.errors import ConfigError, NotFound
from relaysync.master.store.models import ApiToken, JoinToken
from relaysync.master.store.types import ApiTokenInfo, JoinTokenInfo

# 48 bits of the hash: two of a thousand join tokens share them with odds of about 1 in 500
# million, and then both are listed with more characters (_listing_ids)
JOIN_TOKEN_ID_CHARS = 12
_JOIN_TOKEN_ID = re.compile(r"[0-9a-f]{12,64}")


class TokenStore:
    """Store methods for join and API tokens (mixed into Store)."""

    def _read(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    # --- Join tokens ---

    def create_join_token(
        self, *, ttl_s: float | None = None, created_by: str | None = None
    ) -> str:
        """Return a new join token, reusable by any number of agents until it expires.

        Args:
            created_by: "admin" or "api:<id>", the token that asked for it (listed).
        """
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"join token ttl_s {ttl_s} must be positive")
        token, now = new_join_token(), time.time()
        expires_at = None if ttl_s is None else now + ttl_s
        with self._write("create join token") as session:
            session.add(
                JoinToken(
                    token_hash=hash_token(token),
                    created_at=now,
                    expires_at=expires_at,
                    created_by=created_by,
                )
            )
        return token

    def check_join_token(self, token: str) -> bool:
        """Return whether `token` is a join token that has not expired (nor been revoked)."""
        with self._read("check join token") as session:
            row = session.get(JoinToken, hash_token(token))
            return row is not None and (row.expires_at is None or row.expires_at > time.time())

    def list_join_tokens(self) -> list[JoinTokenInfo]:
        """Every join token, oldest first; expired ones too, flagged, until they are revoked."""
        now = time.time()
        with self._read("list join tokens") as session:
            rows = session.scalars(
                select(JoinToken).order_by(JoinToken.created_at, JoinToken.token_hash)
            ).all()
            ids = _listing_ids(r.token_hash for r in rows)
            return [_join_info(r, ids[r.token_hash], now) for r in rows]

    def join_token_id(self, token: str) -> str:
        """Return the id under which `token` is listed.

        Raises:
            NotFound: no such join token (never issued by this store, or revoked).
        """
        token_hash = hash_token(token)
        with self._read("find join token") as session:
            if session.get(JoinToken, token_hash) is None:
                raise NotFound("Join token with hash", token_hash[:JOIN_TOKEN_ID_CHARS])
            return _id_of(session, token_hash)

    def revoke_join_token(self, token_id: str) -> JoinTokenInfo:
        """Delete the join token listed as `token_id`: no agent can join with it any more.

        Agents that joined with it keep their certificates (remove a server to revoke its own).

        Args:
            token_id: 12 to 64 hex characters of the token's hash, in any case.

        Returns:
            The token as it was listed.

        Raises:
            ConfigError: not 12 to 64 hex characters, or the beginning of several tokens' hashes.
            NotFound: no join token has that id.
        """
        prefix = token_id.lower()
        if not _JOIN_TOKEN_ID.fullmatch(prefix):
            raise ConfigError(
                f"join token id {token_id!r} must be 12 to 64 hex characters, "
                "as `relaysync token list` shows it"
            )
        with self._write("revoke join token") as session:
            rows = session.scalars(
                select(JoinToken).where(JoinToken.token_hash.startswith(prefix))
            ).all()
            if not rows:
                raise NotFound("Join token", prefix)
            if len(rows) > 1:
                raise ConfigError(
                    f"join token id {prefix} matches {len(rows)} join tokens: give more of "
                    "its hash, as `relaysync token list` shows it"
                )
            info = _join_info(rows[0], _id_of(session, rows[0].token_hash), time.time())
            session.delete(rows[0])
        return info

    # --- API tokens ---

    def create_api_token(
        self,
        name: str,
        *,
        scope: TokenScope = TokenScope.ADMIN,
        created_by: str | None = None,
    ) -> str:
        """Return a new API token labelled `name`; only its hash is kept.

        Args:
            scope: what it may do (master/api/_context.py enforces it).
            created_by: "admin" or "api:<id>", the token that asked for it (listed).
        """
        if not name.strip():
            raise ConfigError("an API token needs a name")
        token = new_api_token()
        row = ApiToken(
            name=name,
            token_hash=hash_token(token),
            created_at=time.time(),
            scope=TokenScope(scope).value,
            created_by=created_by,
        )
        with self._write("create API token") as session:
            session.add(row)
        return token

    def check_api_token(self, token: str) -> bool:
        """Return whether `token` is a known API token (not revoked)."""
        return self.find_api_token(token) is not None

    def find_api_token(self, token: str) -> ApiTokenInfo | None:
        """Return the API token `token` as listed, or None if unknown or revoked."""
        with self._read("check API token") as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            return None if row is None else _api_info(row)

    def list_api_tokens(self) -> list[ApiTokenInfo]:
        """Every API token, by id."""
        with self._read("list API tokens") as session:
            return [_api_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.id))]

    def api_token_id(self, token: str) -> int:
        """Return the id under which `token` is listed.

        Raises:
            NotFound: no such API token (never issued by this store, or revoked).
        """
        token_hash = hash_token(token)
        with self._read("find API token") as session:
            found = session.scalar(select(ApiToken.id).where(ApiToken.token_hash == token_hash))
        if found is None:
            raise NotFound("API token with hash", token_hash[:JOIN_TOKEN_ID_CHARS])
        return found

    def revoke_api_token(self, token_id: int) -> ApiTokenInfo:
        """Delete API token `token_id`: requests bearing it get 401 from now on.

        Returns:
            The token as it was listed.

        Raises:
            NotFound: no API token has that id.
        """
        with self._write("revoke API token") as session:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise NotFound("API token", token_id)
            info = _api_info(row)
            session.delete(row)
        return info


def _join_info(row: JoinToken, token_id: str, now: float) -> JoinTokenInfo:
    return JoinTokenInfo(
        id=token_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        expired=row.expires_at is not None and row.expires_at <= now,
        created_by=row.created_by,
    )


def _api_info(row: ApiToken) -> ApiTokenInfo:
    return ApiTokenInfo(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        scope=row.scope,
        created_by=row.created_by,
    )


def _id_of(session: Session, token_hash: str) -> str:
    """The listing id of a stored join token: only hashes sharing its first characters matter."""
    near = session.scalars(
        select(JoinToken.token_hash).where(
            JoinToken.token_hash.startswith(token_hash[:JOIN_TOKEN_ID_CHARS])
        )
    ).all()
    return _listing_ids(near)[token_hash]


def _listing_ids(hashes: Iterable[str]) -> dict[str, str]:
    """Each hash's id: its first JOIN_TOKEN_ID_CHARS characters, or as many more as tell it from
    every other hash (in sorted order, the longest shared prefix is with a neighbour)."""
    ordered = sorted(hashes)
    ids = {}
    for i, token_hash in enumerate(ordered):
        neighbours = ordered[max(i - 1, 0) : i] + ordered[i + 1 : i + 2]
        shared = max((len(os.path.commonprefix([token_hash, n])) for n in neighbours), default=0)
        ids[token_hash] = token_hash[: max(JOIN_TOKEN_ID_CHARS, shared + 1)]
    return ids

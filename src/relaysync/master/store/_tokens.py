"""Join and API tokens: only their SHA-256 hashes are kept (mixed into Store).

Error handling: bad input raises ConfigError; database failures raise StoreError.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.auth.tokens import hash_token, new_api_token, new_join_token
from relaysync.errors import ConfigError
from relaysync.master.store.models import ApiToken, JoinToken


class TokenStore:
    """Store methods for join and API tokens (mixed into Store)."""

    def _read(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def create_join_token(self, *, ttl_s: float | None = None) -> str:
        """Return a new join token, reusable by any number of agents until it expires."""
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"join token ttl_s {ttl_s} must be positive")
        token, now = new_join_token(), time.time()
        expires_at = None if ttl_s is None else now + ttl_s
        with self._write("create join token") as session:
            session.add(
                JoinToken(token_hash=hash_token(token), created_at=now, expires_at=expires_at)
            )
        return token

    def check_join_token(self, token: str) -> bool:
        """Return whether `token` is a join token that has not expired."""
        with self._read("check join token") as session:
            row = session.get(JoinToken, hash_token(token))
            return row is not None and (row.expires_at is None or row.expires_at > time.time())

    def create_api_token(self, name: str) -> str:
        """Return a new API token labelled `name`; only its hash is kept."""
        if not name.strip():
            raise ConfigError("an API token needs a name")
        token = new_api_token()
        with self._write("create API token") as session:
            session.add(ApiToken(name=name, token_hash=hash_token(token), created_at=time.time()))
        return token

    def check_api_token(self, token: str) -> bool:
        """Return whether `token` is a known API token."""
        with self._read("check API token") as session:
            found = session.scalar(
                select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))
            )
            return found is not None

"""Tokens are long random URL-safe strings, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib

from relaysync.auth.tokens import hash_token, new_api_token, new_join_token, tokens_equal


def test_tokens_are_unique_and_urlsafe() -> None:
    tokens = {new_join_token() for _ in range(100)} | {new_api_token() for _ in range(100)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) > 40
        assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def test_hash_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_tokens_equal() -> None:
    token = new_api_token()
    assert tokens_equal(token, token)
    assert not tokens_equal(token, token + "x")

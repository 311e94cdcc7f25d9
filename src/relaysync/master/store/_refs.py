"""References to rows by id or name: which ones can be a row id at all."""

from __future__ import annotations

INT64_MAX = 2**63 - 1  # the widest id column (SQLite INTEGER, PostgreSQL bigint)
_MAX_DIGITS = len(str(INT64_MAX))


def row_id(ref: int | str) -> int | None:
    """The row id `ref` names: an int, or a string of ASCII digits, within a 64-bit column;
    None for anything else (a name, or a number no row can have: the driver would overflow)."""
    if isinstance(ref, int):
        return ref if -INT64_MAX - 1 <= ref <= INT64_MAX else None
    if not (ref.isascii() and ref.isdigit()) or len(ref) > _MAX_DIGITS:
        return None
    value = int(ref)
    return value if value <= INT64_MAX else None

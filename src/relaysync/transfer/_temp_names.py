"""The names of files being received: a batch's temp files and the resumable partials.

Both start with TEMP_PREFIX and lie beside their final name: what a crash leaves of them is
removed by transfer/staging.py `clean_stale_temps` (but the partials kept to be resumed). Moved
out of transfer/staging.py.
"""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path

import xxhash

from relaysync.constants import TEMP_PREFIX

_TEMP_SALT = secrets.token_hex(
    3
)  # per process; with the counter, unique without a syscall per name
_temp_counter = itertools.count()


def temp_name_for(final: Path) -> Path:
    return Path(_temp_name(str(final)))


_NAME_KEPT_BYTES = 160  # of a file's name in its temp name; with prefix and suffix under NAME_MAX


def _short_name(name: str) -> str:
    """`name` if short enough to carry in a temp name, else a prefix and a hash of the whole name.

    Bounded in bytes (a 255-byte name of 85 CJK characters plus our prefix and suffix would pass
    NAME_MAX), and unique: two long names that share their beginning get different temp names.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _NAME_KEPT_BYTES:
        return name
    head = raw[: _NAME_KEPT_BYTES - 17].decode("utf-8", "ignore")  # whole characters only
    return f"{head}~{xxhash.xxh3_64_hexdigest(raw)}"


def _temp_name(final: str) -> str:
    # rpartition, not os.path.split and join: a fifth of this function's time on 10,000 small
    # files. A relative final without a folder stays where it is ("" and "" before the name).
    folder, sep, name = final.rpartition("/")
    if not (name.isascii() and len(name) <= _NAME_KEPT_BYTES):  # else one byte a character
        name = _short_name(name)
    return f"{folder}{sep}{TEMP_PREFIX}{name}.{_TEMP_SALT}{next(_temp_counter):x}.tmp"


PARTIAL_SUFFIX = ".part"


def partial_name_for(final: Path, content_hash: bytes, owner: int) -> Path:
    """The name of a resumable partial: stable for (mapping, file, content), so a restart finds
    it, and the mapping's own (members of an N:M job share a folder and may receive the same file)."""
    return final.with_name(
        f"{TEMP_PREFIX}{_short_name(final.name)}.{owner}.{content_hash.hex()[:16]}{PARTIAL_SUFFIX}"
    )

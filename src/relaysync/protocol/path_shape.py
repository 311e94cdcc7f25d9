"""The shape of a path relative to a mapping's root, as the master takes it from a report.

A target applies a change only at a path `transfer/paths.check_relpath` takes; the master does
not ask for all of that (deeper trees and reserved temp names are a target's to refuse, and a
removed path, found on a target's disk, may be either), only what keeps a path inside its root:
not absolute, no empty, "." or ".." component, no NUL, at most MAX_PATH_BYTES.
"""

from __future__ import annotations

from relaysync.constants import MAX_PATH_BYTES


def path_fault(path: str, *, allow_root: bool = False) -> str | None:
    """Why `path` is no path relative to a mapping's root (None if it is one; "" is the root
    itself, if `allow_root`). Deeper trees and reserved temp names are a target's to refuse:
    a removed path may be either, found on its disk."""
    if not path:
        return None if allow_root else "an empty path"
    if "\x00" in path:
        return "a path with NUL"
    if path.startswith("/"):
        return "an absolute path"
    if (len(path) if path.isascii() else len(path.encode("utf-8", "surrogateescape"))) > (
        MAX_PATH_BYTES
    ):
        return f"a path over {MAX_PATH_BYTES} bytes"
    if "//" in path or path.endswith("/") or _dot_component(path):
        return f"a path with an empty, '.' or '..' component ({path[:80]!r})"
    return None


def _dot_component(path: str) -> bool:
    """Whether a component of `path` is "." or ".." (substring tests: no split per path)."""
    if path in (".", "..") or path.startswith(("./", "../")) or path.endswith(("/.", "/..")):
        return True
    return "/./" in path or "/../" in path

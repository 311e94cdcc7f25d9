"""Folder rules: the system's own trees, which no mapping may replicate from or into.

A target folder is made identical to its source: a comparison erases whatever the source lacks
there, and opening it rescans it whole. So "/" or "/etc" as a target replaces the system, and as
a source it sends it (with /proc, /sys and /dev: endless pseudo-files). The master refuses such
mappings (master/store/_folders.py) and every agent refuses them again (agent/guard.py).
"""

from __future__ import annotations

import posixpath

# Refused as the folder itself: the root and the trees the system runs from. A folder below them
# may be mapped (/etc/nginx/sites, /usr/local/www, /var/www).
SYSTEM_FOLDERS = frozenset(
    {
        "/",
        "/bin",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/root",
        "/run",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
    }
)
# Refused with everything below them: kernel file systems, the boot loader's files, and the data
# directories README.md suggests for the master and an agent (journals, manifests, keys).
SYSTEM_TREES = (
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/var/lib/relaysync",
    "/var/lib/relaysync-agent",
)
RULE = (
    "relaysync never replicates from or into / or a system folder ("
    + " ".join(sorted(SYSTEM_FOLDERS - {"/"}))
    + ", nor anything below "
    + " ".join(SYSTEM_TREES)
    + "); map a folder of its own"
)


def normalise(path: str) -> str:
    """Return absolute `path` normalised, with one leading slash (normpath keeps two: "//etc")."""
    return "/" + posixpath.normpath(path).lstrip("/")


def within(path: str, root: str) -> bool:
    """Whether normalised absolute `path` is `root` or lies below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def overlap(a: str, b: str) -> bool:
    """Whether two normalised absolute folders are one, or one contains the other."""
    return within(a, b) or within(b, a)


def system_folder(path: str) -> str:
    """Return why normalised absolute `path` is a system folder, or "" if it is not one."""
    path = normalise(path)
    if path in SYSTEM_FOLDERS:
        return f"{path} is a system folder: {RULE}"
    for tree in SYSTEM_TREES:
        if within(path, tree):
            return f"{path} is in the system tree {tree}: {RULE}"
    return ""

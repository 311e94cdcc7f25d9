"""Content monitoring: inotify watcher, change buffer, filters, journal, scanner and manifest."""

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.journal import Journal
from relaysync.watch.manifest import Entry, Manifest
from relaysync.watch.recorder import ChangeRecorder, Detection
from relaysync.watch.scanner import hash_file, make_entry, scan_tree
from relaysync.watch.watcher import Watcher

__all__ = [
    "ChangeRecorder",
    "Detection",
    "Entry",
    "FsEvent",
    "Journal",
    "JournalRecord",
    "Manifest",
    "PathFilter",
    "PendingChange",
    "Watcher",
    "hash_file",
    "make_entry",
    "scan_tree",
]

"""Files published by link(2) then unlink(2) of their first name reach the targets.

Maildir delivery (write tmp/x, link new/x, unlink tmp/x) and deploys that hard-link files into
place leave no close-write under the new name. Found in review (notes/s34/watch_review.md #1):
the watcher missed them unless the first name was still there when it handled the CREATE, and
the targets got them at the next full rescan only (an hour by default).
"""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

MESSAGES = 40


def test_maildir_style_link_then_unlink_delivery_replicates(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping()
    for sub in ("tmp", "new", "cur"):
        (src / sub).mkdir()
    (src / "cur" / "seed").write_text("seed")
    fleet.wait_converged(src, dsts)
    for i in range(MESSAGES):
        (src / "tmp" / f"m{i}").write_text(f"message {i}\n" * (i + 1))
        os.link(src / "tmp" / f"m{i}", src / "new" / f"m{i}")
        os.unlink(src / "tmp" / f"m{i}")
    os.close(os.open(src / "cur" / ".lock", os.O_CREAT | os.O_RDONLY, 0o644))  # flock(1)'s
    fleet.wait_converged(src, dsts)
    assert (dsts[0] / "new" / "m39").read_text() == "message 39\n" * 40

"""A source directory the source agent cannot list (mode 000, the agent without CAP_DAC_OVERRIDE,
as when it runs as a user other than root), with real processes: nothing below it is deleted on
the target (not by the scan, not by a restart's scan, not by the comparison a new session
makes), every other change keeps flowing, the agent says which directory and what to do, and
once its permissions are fixed what changed in it meanwhile arrives, and later changes in it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from relaysync.watch.manifest import Manifest
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet
from tests.integration.test_unreadable_source import NO_DAC
from tests.integration.test_unreadable_source import fleet as fleet  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def _arrived(path: Path, text: str) -> None:
    wait_until(
        lambda: path.exists() and path.read_text() == text,
        timeout_s=CONVERGE_TIMEOUT_S,
        what=str(path),
    )


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    yield
    for dirpath, dirnames, _ in os.walk(tmp_path):  # so that pytest can remove the tree
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


def test_an_unlistable_directory_is_kept_reported_and_synced_once_listable(
    fleet: Fleet,  # noqa: F811
    restore_modes: None,
) -> None:
    """Before the fix, the first event below the directory raised out of the scan: the source
    mapping stopped and restarted, each restart's rescan stopping at the directory again, so
    no change of the folder went out (b.txt never arrived)."""
    _, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "d" / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "d" / "f1").write_text("first f1")
    (src / "d" / "sub" / "f2").write_text("f2")
    fleet.wait_converged(src, [dst])

    # 1. unlistable, and changed inside meanwhile (the test runs as root): kept on the target
    (src / "d").chmod(0)
    (src / "d" / "f1").write_text("second f1, written while unlistable")
    (src / "d" / "new.txt").write_text("made while unlistable")
    (src / "b.txt").write_text("elsewhere")
    _arrived(dst / "b.txt", "elsewhere")
    log = fleet.cluster.base / "agent-src.log"
    wait_until(
        lambda: "cannot list directory d in source" in log.read_text(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the failure logged",
    )
    assert "read and enter it" in log.read_text()
    _kept(dst)

    # 2. the agents restart with d unlistable, d/sub/f2 deleted meanwhile (a delete inotify
    # reports is journaled as such; this one only a listing can find): the source's scan keeps
    # d, and the comparison of the new session deletes nothing below it (it puts back a.txt,
    # lost by the target meanwhile: so it ran)
    for name in ("src", "t1"):
        fleet.cluster.agents[name].process.stop()
    (src / "d" / "sub" / "f2").unlink()
    _lose(fleet, dst, "a.txt")
    fleet.cluster.start_agent("t1")
    fleet.cluster.start_agent("src", prefix=NO_DAC)
    _arrived(dst / "a.txt", "a")
    (src / "c.txt").write_text("after the restart")
    _arrived(dst / "c.txt", "after the restart")
    _kept(dst)

    # 3. listable again (no write in it): what changed in it arrives, and later changes too
    (src / "d").chmod(0o755)
    _arrived(dst / "d" / "new.txt", "made while unlistable")
    _arrived(dst / "d" / "f1", "second f1, written while unlistable")
    wait_until(
        lambda: not (dst / "d" / "sub" / "f2").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="d/sub/f2 deleted",
    )
    (src / "d" / "later.txt").write_text("d is watched again")
    _arrived(dst / "d" / "later.txt", "d is watched again")
    fleet.wait_converged(src, [dst])


def _kept(dst: Path) -> None:
    assert (dst / "d" / "f1").read_text() == "first f1"
    assert (dst / "d" / "sub" / "f2").read_text() == "f2"
    assert not (dst / "d" / "new.txt").exists()


def _lose(fleet: Fleet, dst: Path, rel: str) -> None:
    """The target (stopped) loses `rel` from its disk and its manifest: only a comparison of
    the manifests sends it again."""
    (dst / rel).unlink()
    [db] = (fleet.cluster.agents["t1"].data_dir / "targets").glob("*/manifest.db")
    manifest = Manifest(db)
    try:
        manifest.remove_tree(rel)
    finally:
        manifest.close()

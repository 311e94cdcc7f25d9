"""SourceMapping's mass-delete guard: an operator's confirmation lets the held deletes go."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from relaysync.agent import _delete_hold
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, MassDeleteEnded, MassDeleteHeld
from relaysync.watch.watcher import FsEvent

OLD_NS = 10**18  # long cooled down: a scan journals such a file at once
DIRS, FILES = 8, 60  # 488 entries: removing 5 directories trips the guard, 3 do not


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path, list[MassDeleteHeld]]:
    root = tmp_path / "src"
    root.mkdir()
    for d in range(DIRS):
        (root / f"d{d}").mkdir()
        for i in range(FILES):
            (root / f"d{d}" / f"{i}.txt").write_text(str(i))
            os.utime(root / f"d{d}" / f"{i}.txt", ns=(OLD_NS, OLD_NS))
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state")
    alarms: list[MassDeleteHeld] = []
    mapping.on_guard = alarms.append
    return mapping, root, alarms


def _flat_mapping(tmp_path: Path, files: int) -> tuple[SourceMapping, Path, list[MassDeleteHeld]]:
    """A source folder of `files` plain files and no directory."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(files):
        (root / f"{i}.txt").write_text(str(i))
        os.utime(root / f"{i}.txt", ns=(OLD_NS, OLD_NS))
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state")
    alarms: list[MassDeleteHeld] = []
    mapping.on_guard = alarms.append
    return mapping, root, alarms


def _remove(root: Path, dirs: range) -> None:
    for d in dirs:
        shutil.rmtree(root / f"d{d}")


def _ops(mapping: SourceMapping, after: int) -> list[tuple[str, str]]:
    return [(r.op, r.path) for r in mapping.journal.read(after)]


async def _other_batch_first(mapping: SourceMapping, root: Path, kind: str) -> None:
    """A batch that takes the record lock between the confirmation and the service's rescan."""
    (root / "new.txt").write_text("written meanwhile")
    if kind == "watched write":
        os.utime(root / "new.txt", ns=(OLD_NS, OLD_NS))
        await mapping._record([FsEvent(kind="write", path="new.txt")])
        return
    with open(root / "new.txt", "a") as writer:  # still open for writing: a scan holds it
        writer.write(" and more")
        writer.flush()
        await mapping._record([FsEvent(kind="rescan", path="new.txt")])
        assert "new.txt" in mapping._held
    os.utime(root / "new.txt", ns=(OLD_NS, OLD_NS))  # cooled down
    await mapping.recheck_held_once()


@pytest.mark.parametrize("kind", ["watched write", "held file re-checked"])
def test_a_confirmation_is_used_by_the_held_deletes_not_by_another_batch(
    tmp_path: Path, kind: str
) -> None:
    """A write journaled after confirm-deletes and before the rescan used the confirmation up:
    the mass delete was held again and the alarm raised again."""
    mapping, root, alarms = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        _remove(root, range(DIRS))
        await mapping.rescan()
        assert len(alarms) == 1 and _ops(mapping, head) == []  # held
        assert (
            mapping.deletes_held == alarms[0].deletes == DIRS * (FILES + 1)
        )  # what the master sees
        assert mapping.confirm_deletes(1)
        await _other_batch_first(mapping, root, kind)
        assert _ops(mapping, head) == [("write", "new.txt")]
        await mapping.rescan()  # what the service runs after a confirmation
        assert mapping.deletes_held == 0  # they went: the master's alert on it resolves

    try:
        anyio.run(main)
        ops = _ops(mapping, 0)
        assert sorted(p for op, p in ops if op == "delete") == [f"d{d}" for d in range(DIRS)]
        assert len(alarms) == 1, alarms
    finally:
        mapping.close()


def test_a_confirmation_lets_go_only_once(tmp_path: Path) -> None:
    """After the confirmed deletes went, a new mass delete is held again."""
    mapping, root, alarms = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        _remove(root, range(5))
        await mapping.rescan()
        assert mapping.confirm_deletes(1)
        await mapping.rescan()
        head = mapping.journal.last_seq
        _remove(root, range(5, DIRS))
        await mapping.rescan()
        assert _ops(mapping, head) == []

    try:
        anyio.run(main)
        assert len(alarms) == 2, alarms
    finally:
        mapping.close()


def test_a_confirmation_whose_deletes_are_gone_lets_no_later_mass_delete_go(
    tmp_path: Path,
) -> None:
    """The disk came back before the operator confirmed: the confirmation's rescan finds nothing
    to delete, and a mass delete weeks later is held and alarmed like the first."""
    mapping, root, alarms = _mapping(tmp_path)
    away = tmp_path / "unmounted"

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        root.rename(away)
        root.mkdir()
        await mapping.rescan()
        assert len(alarms) == 1
        root.rmdir()
        away.rename(root)  # mounted again
        assert mapping.confirm_deletes(1)
        await mapping.rescan()
        (root / "new.txt").write_text("a write")
        os.utime(root / "new.txt", ns=(OLD_NS, OLD_NS))
        await mapping._record([FsEvent(kind="write", path="new.txt")])
        _remove(root, range(DIRS))
        await mapping.rescan()
        assert _ops(mapping, head) == [("write", "new.txt")]

    try:
        anyio.run(main)
        assert len(alarms) == 2, alarms
    finally:
        mapping.close()


@pytest.mark.parametrize("seen_by", ["rescan", "watched deletes"])
def test_deleting_every_file_of_a_flat_folder_is_held(tmp_path: Path, seen_by: str) -> None:
    """Found in review: only entries below a deleted path were counted, so deleting all 200
    plain files of a flat folder counted 0, raised no alarm, and the deletes went out."""
    mapping, root, alarms = _flat_mapping(tmp_path, 200)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        for i in range(200):
            (root / f"{i}.txt").unlink()
        if seen_by == "rescan":
            await mapping.rescan()
        else:
            await mapping._record([FsEvent(kind="delete", path=f"{i}.txt") for i in range(200)])
        assert _ops(mapping, head) == []  # held: nothing goes to the targets

    try:
        anyio.run(main)
        assert len(alarms) == 1 and alarms[0].entries == 200, alarms
    finally:
        mapping.close()


def test_a_deleted_directory_counts_itself(tmp_path: Path) -> None:
    """Found in review: a deleted directory did not count, only what was below it. Removing 4
    of the 8 directories removes 4 + 240 = 244 of 488 entries, half the folder: held."""
    mapping, root, alarms = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        _remove(root, range(4))
        await mapping.rescan()
        assert _ops(mapping, head) == []

    try:
        anyio.run(main)
        assert len(alarms) == 1, alarms
    finally:
        mapping.close()


def test_a_few_deletes_pass(tmp_path: Path) -> None:
    """Fewer than GUARD_MIN_DELETES entries go at once: no hold, even in a small folder."""
    mapping, root, alarms = _flat_mapping(tmp_path, 150)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        for i in range(99):
            (root / f"{i}.txt").unlink()
        await mapping.rescan()
        assert len(_ops(mapping, head)) == 99

    try:
        anyio.run(main)
        assert alarms == []
    finally:
        mapping.close()


def _watched_rmtree(root: Path, dirs: range) -> list[FsEvent]:
    """What the watcher reports for `rm -rf`: each file, then its directory."""
    events = []
    for d in dirs:
        events += [FsEvent(kind="delete", path=f"d{d}/{i}.txt") for i in range(FILES)]
        events.append(FsEvent(kind="delete", path=f"d{d}", is_dir=True))
    _remove(root, dirs)
    return events


@pytest.mark.parametrize("seen_by", ["rescan", "watched deletes"])
def test_the_alarm_counts_every_held_delete(tmp_path: Path, seen_by: str) -> None:
    """Found in review: counting stopped at the threshold (half the folder), so the alarm said
    244 of 488 whatever went. 5 directories of 60 files are 305 entries; the watcher reports
    each file and its directory, which must count once."""
    mapping, root, alarms = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        if seen_by == "rescan":
            _remove(root, range(5))
            await mapping.rescan()
        else:
            await mapping._record(_watched_rmtree(root, range(5)))

    try:
        anyio.run(main)
        assert [(a.deletes, a.entries) for a in alarms] == [(5 + 5 * FILES, DIRS + DIRS * FILES)]
    finally:
        mapping.close()


def test_the_alarm_counts_every_file_of_a_flat_folder(tmp_path: Path) -> None:
    mapping, root, alarms = _flat_mapping(tmp_path, 200)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        for i in range(200):
            (root / f"{i}.txt").unlink()
        await mapping.rescan()

    try:
        anyio.run(main)
        assert [(a.deletes, a.entries, a.root_missing) for a in alarms] == [(200, 200, False)]
    finally:
        mapping.close()


class _Clock:
    """Stands in for `anyio` in the guard's hold module: its sleep advances a clock of its own,
    as far as the test lets it (`run_until`), so an hour of rechecks takes what their work
    takes."""

    def __init__(self) -> None:
        self.now = 0.0
        self._limit = 0.0
        self._moved = anyio.Event()
        self._parked = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        while self.now + seconds > self._limit:
            self._parked.set()
            await self._moved.wait()
        self.now += seconds

    async def run_until(self, limit: float) -> None:
        """Let the sleepers run until each waits to sleep past `limit`."""
        self._limit, self._parked = limit, anyio.Event()
        moved, self._moved = self._moved, anyio.Event()
        moved.set()
        with anyio.fail_after(60):
            await self._parked.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)


def _count_full_rescans(mapping: SourceMapping, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    scans: list[float] = []
    detect = mapping.recorder.detect

    def counting(events: Sequence[FsEvent], **kwargs: Any) -> Any:
        scans.extend(1.0 for e in events if e.kind == "rescan" and not e.path)
        return detect(events, **kwargs)

    monkeypatch.setattr(mapping.recorder, "detect", counting)
    return scans


async def _unmount(mapping: SourceMapping, root: Path, away: Path) -> None:
    """The disk goes: an empty mount point, which the rescan the watcher then runs finds."""
    root.rename(away)
    root.mkdir()
    await mapping._record([FsEvent(kind="rescan", path="")])


def test_rechecks_of_a_hold_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: a hold rescanned the whole folder every GUARD_RECHECK_S (5 s) for as
    long as it lasted, 240 scans in 20 minutes, however big the folder. Now each full rescan
    that finds the deletes still pending doubles the wait for the next (5 s, 10 s, ... up to
    5 minutes); between them a recheck only looks for a few of the held paths."""
    mapping, root, alarms = _mapping(tmp_path)
    clock = _Clock()
    monkeypatch.setattr(
        _delete_hold, "anyio", clock
    )  # the hold's rechecks (runs are not judged here)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        await _unmount(mapping, root, tmp_path / "unmounted")
        assert len(alarms) == 1
        scans = _count_full_rescans(mapping, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._recheck_guard)
            for minute in range(1, 21):
                await clock.run_until(60.0 * minute)
                if len(scans) > 10:
                    break
            tg.cancel_scope.cancel()
        assert len(scans) <= 10, f"{len(scans)} full rescans in {clock.now:.0f} s"
        assert clock.now >= 1200

    try:
        anyio.run(main)
        assert len(alarms) == 1
    finally:
        mapping.close()


def test_a_hold_ends_when_a_recheck_finds_the_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a hold never ended on its own. The disk came back and nobody
    confirmed: the guard stayed held, rescanning every 5 s for ever, and a real mass delete
    later raised no alarm (one was raised already). Now the first recheck after the folder is
    back finds the deletes gone and ends the hold; then the rechecks stop."""
    mapping, root, alarms = _mapping(tmp_path)
    clock = _Clock()
    monkeypatch.setattr(
        _delete_hold, "anyio", clock
    )  # the hold's rechecks (runs are not judged here)
    away = tmp_path / "unmounted"

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        await _unmount(mapping, root, away)
        scans = _count_full_rescans(mapping, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._recheck_guard)
            await clock.run_until(600.0)
            root.rmdir()
            away.rename(root)  # mounted again
            assert mapping.deletes_held == DIRS * (FILES + 1)
            await clock.run_until(clock.now + 2 * _delete_hold.GUARD_RECHECK_S)
            assert mapping.deletes_held == 0  # the hold ended by itself: so does the alert
            ended = len(scans)
            await clock.run_until(clock.now + 900.0)
            assert len(scans) == ended, "the rechecks went on after the folder came back"
            tg.cancel_scope.cancel()
        assert _ops(mapping, head) == []  # nothing was deleted meanwhile
        _remove(root, range(DIRS))  # weeks later, a real mass delete
        await mapping._record([FsEvent(kind="rescan", path="")])
        assert _ops(mapping, head) == []

    try:
        anyio.run(main)
        assert len(alarms) == 2, alarms
    finally:
        mapping.close()


def _ends(mapping: SourceMapping) -> list[MassDeleteEnded]:
    ends: list[MassDeleteEnded] = []
    mapping.on_hold_end = ends.append
    return ends


def _end(reason: str, held: MassDeleteHeld | None = None) -> MassDeleteEnded:
    """The end of `held` (None: of whichever hold the master shows, after a restart)."""
    return MassDeleteEnded(mapping_id=1, reason=reason, hold=held.hold if held else 0)


def test_a_hold_that_ends_by_itself_is_reported(tmp_path: Path) -> None:
    """Found in review: a hold that ended without a confirmation (the disk back, the files put
    back) told the master nothing, so the console showed it held until the mapping went. Now
    its end is reported, with why; and a hold the operator confirmed reports its end too."""
    mapping, root, alarms = _mapping(tmp_path)
    ends = _ends(mapping)
    away = tmp_path / "unmounted"

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        assert ends == [_end("source restarted")]  # the first full scan: no hold
        await _unmount(mapping, root, away)
        assert len(alarms) == 1 and alarms[0].hold > 0 and ends[1:] == []
        root.rmdir()
        away.rename(root)  # mounted again
        await mapping.rescan()
        assert ends[1:] == [_end("paths back", alarms[0])]
        await mapping.rescan()  # no hold: nothing more to tell
        assert len(ends) == 2
        _remove(root, range(5))
        await mapping.rescan()
        assert len(alarms) == 2 and alarms[1].hold > alarms[0].hold  # a hold of its own
        assert mapping.confirm_deletes(1)
        await mapping.rescan()
        assert ends[2:] == [_end("confirmed", alarms[1])]

    try:
        anyio.run(main)
    finally:
        mapping.close()


def test_a_hold_ends_with_its_source(tmp_path: Path) -> None:
    """The source stops (its mapping removed or changed): a hold it had is reported over once;
    a source without a hold reports nothing."""
    mapping, root, alarms = _mapping(tmp_path)
    ends = _ends(mapping)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        ends.clear()  # the first full scan's "source restarted"
        mapping.stop_hold("mapping removed")
        assert ends == []
        _remove(root, range(5))
        await mapping.rescan()
        assert len(alarms) == 1
        mapping.stop_hold("mapping removed")
        mapping.stop_hold("mapping removed")
        assert ends == [_end("mapping removed", alarms[0])]

    try:
        anyio.run(main)
    finally:
        mapping.close()


def test_a_source_started_again_ends_a_hold_it_may_have_had(tmp_path: Path) -> None:
    """Found in review: an agent stopped while holding (holds are in memory; a stop tells
    nothing) and started again with the folder back raised no hold and told nothing: the
    master showed the hold for ever. Now the first full scan of a source that started, finding
    nothing to hold, ends whichever hold the master shows (hold 0), once; a first scan that
    holds tells its hold instead (the master's record is replaced)."""
    mapping, root, alarms = _mapping(tmp_path)
    away = tmp_path / "unmounted"

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        await _unmount(mapping, root, away)
        assert len(alarms) == 1

    async def again() -> None:  # the agent started again, the folder back meanwhile
        await restarted._record([FsEvent(kind="rescan", path="")])
        await restarted.rescan()
        assert ends2 == [_end("source restarted")]

    async def held_again() -> None:  # started again, the folder still away: held anew
        await third._record([FsEvent(kind="rescan", path="")])
        assert ends3 == [] and len(alarms3) == 1

    anyio.run(main)
    mapping.close()
    spec = mapping.spec
    root.rmdir()
    away.rename(root)
    restarted = SourceMapping(spec, tmp_path / "state")
    ends2 = _ends(restarted)
    try:
        anyio.run(again)
    finally:
        restarted.close()
    root.rename(away)
    root.mkdir()
    third = SourceMapping(spec, tmp_path / "state")
    ends3 = _ends(third)
    alarms3: list[MassDeleteHeld] = []
    third.on_guard = alarms3.append
    try:
        anyio.run(held_again)
    finally:
        third.close()

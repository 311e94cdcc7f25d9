"""`relaysync demo` end to end, as README's first command runs it: twice in the same folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relaysync.testing.caches import cache_base_dir
from relaysync.testing.cluster import wait_until

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120.0  # a master, two agents and Varnish, on a busy 2-core machine
STOP_TIMEOUT_S = 60.0


def _start(dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "relaysync", "demo", "--dir", str(dir), "--targets", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env | {"COLUMNS": "200"},
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def test_the_demo_runs_again_in_the_same_folder_and_refuses_a_second_at_once(
    tmp_path: Path,
) -> None:
    base = cache_base_dir()  # Varnish (target-1's cache) drops root: its folder must be traversable
    dir = base / "demo"
    try:
        for run in range(2):
            _one_run(dir, tmp_path / f"demo-{run}.log", run)
        # nothing the demos started outlives them (Varnish runs in its own session)
        assert not _processes_mentioning(str(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def _one_run(dir: Path, log: Path, run: int) -> None:
    proc = _start(dir, log)
    try:
        wait_until(
            lambda: "demo ready" in log.read_text() or proc.poll() is not None,
            timeout_s=START_TIMEOUT_S,
            interval_s=0.2,
            what="demo start",
        )
        assert proc.poll() is None, log.read_text()
        if run == 1:  # while one runs, a second in the same folder stops with what to do
            other = subprocess.run(
                [sys.executable, "-m", "relaysync", "demo", "--dir", str(dir)],
                capture_output=True,
                text=True,
                timeout=STOP_TIMEOUT_S,
            )
            assert other.returncode == 2 and "another relaysync demo is running" in other.stdout
        data = os.urandom(100_000 + run)
        (dir / "source" / f"f{run}.bin").write_bytes(data)
        target = dir / "target-1" / f"f{run}.bin"
        wait_until(
            lambda: target.exists() and target.read_bytes() == data,
            timeout_s=START_TIMEOUT_S,
            interval_s=0.05,
            what="file replicated",
        )
        assert (dir / "target-1" / "f0.bin").exists()  # the first run's file is kept by the second
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()


def test_a_cache_interrupted_while_it_starts_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the demo while Varnish comes up: the half-started cache must not stay behind."""
    from relaysync.testing.caches import Cache, Origin

    base = cache_base_dir()
    origin = Origin(base / "www").start()
    cache = Cache("varnish", base / "varnish", origin.port)

    def interrupted(self: Cache) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Cache, "_wait_http", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            cache.start()
        assert cache.popen is not None and cache.popen.poll() is not None
        assert not _processes_mentioning(str(base))
    finally:
        origin.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_cache_interrupted_while_it_becomes_a_site_is_stopped() -> None:
    """Ctrl-C in the demo after Varnish is up but before the demo holds it (the site is being
    created): Varnish and the origin must not stay behind (seen: an orphaned varnishd)."""
    from rich.console import Console

    from relaysync.cli._demo_cache import start_demo_cache

    class _Api:
        def post(self, *args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

    class _Cluster:
        api = _Api()

    base = cache_base_dir()
    (base / "target-1").mkdir(parents=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            start_demo_cache(_Cluster(), base, Console(quiet=True))  # type: ignore[arg-type]
        assert not _processes_mentioning(str(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)

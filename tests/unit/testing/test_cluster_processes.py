"""The test fleet's processes go when the process that started them dies: a test run killed by
a timeout (SIGTERM to pytest runs no teardown) or by kill -9 left its master and agents running
for good (found after a helper's interrupted run: a master at 1 % CPU for 40 minutes)."""

from __future__ import annotations

import os
import subprocess
import sys

from relaysync.testing.cluster import wait_until

# A parent that starts a long sleep the way Process.start starts a master or an agent, prints
# its pid, and dies at once without any cleanup.
PARENT = """
import os, subprocess, sys
from relaysync.testing.cluster import _die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"],
    stdout=subprocess.DEVNULL,  # not our pipe: reading it to its end would wait for the child
    stderr=subprocess.DEVNULL,
    start_new_session=True,
    preexec_fn=_die_with_parent(os.getpid()),
)
print(child.pid, flush=True)
os._exit(0)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_a_fleet_process_ends_when_the_process_that_started_it_dies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, check=True, timeout=60
    )
    child = int(out.stdout.split()[0])
    try:
        wait_until(lambda: not _alive(child), timeout_s=30, what="the orphan's end")
    finally:
        if _alive(child):  # only on failure: the orphan we started, by its pid
            os.kill(child, 9)

"""A deploy that replaces files with ones of the same size and mtime reaches the targets.

`rsync -a --checksum build/ live/` of a reproducible build (SOURCE_DATE_EPOCH): each file is
written to a temp name and renamed over the live one, size and mtime as before, content new.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

FILES = 50
EPOCH_NS = 1_700_000_000_000_000_000  # the build's SOURCE_DATE_EPOCH, on every file


def _release(root: Path, number: int) -> None:
    for i in range(FILES):
        path = root / f"f{i:02}.js"
        path.write_bytes(b"release-%d %02d\n" % (number, i))  # the same size in every release
        os.utime(path, ns=(EPOCH_NS, EPOCH_NS))


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_checksum_deploy_of_same_size_and_mtime_files_replicates(
    fleet: Fleet, tmp_path: Path
) -> None:
    _, src, dsts = fleet.new_mapping()
    _release(src, 1)
    fleet.wait_converged(src, dsts)
    build = tmp_path / "build"
    build.mkdir()
    _release(build, 2)
    subprocess.run(["rsync", "-a", "--checksum", f"{build}/", f"{src}/"], check=True)
    assert (src / "f00.js").read_bytes() == b"release-2 00\n"
    fleet.wait_converged(src, dsts, timeout_s=60.0)

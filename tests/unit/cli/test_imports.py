"""What a CLI process loads: every command is one process (the operator's, or a test's), so the
packages only some commands use are loaded by those commands alone."""

from __future__ import annotations

import json
import subprocess
import sys

# Packages none of the REST commands (status, log, mapping, token...) needs: the agent's
# watcher, scanner and manifest, the transfer engine, and the fleet harness of `demo`.
NOT_AT_START = ("relaysync.watch", "relaysync.transfer", "relaysync.testing")


def test_the_cli_app_loads_without_the_watch_transfer_and_testing_packages() -> None:
    """Was: `mapping` loaded relaysync.watch (for one mode-mask check), `restore` the transfer
    package and `demo` the test fleet's harness at import, in every CLI process."""
    code = "import json, sys\nimport relaysync.cli.app\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [m for m in json.loads(out.stdout) if m.startswith(NOT_AT_START)]
    assert loaded == []

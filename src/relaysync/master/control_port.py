"""The master's control port: the one control_listen gives, else the one remembered from the
last run in data_dir/control-port, else a new one kept from now on.

Every agent saves the control address at its join (its identity/master.json) and connects
there ever after, so a port chosen by the master is remembered across restarts. When that port
is taken at a restart, the operator did not choose it: the error says where it came from
(ControlPortTaken) rather than "choose another with --control-listen".
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from relaysync._util.ports import stable_free_port
from relaysync.config.load import split_address
from relaysync.errors import ControlPortTaken

PORT_FILE = "control-port"


@dataclass(frozen=True)
class ControlPort:
    """Where the control server listens, and the file its port was read from (None: given
    with control_listen, or chosen now)."""

    host: str
    port: int
    remembered_in: Path | None = None

    def taken(self, exc: BaseException) -> ControlPortTaken | None:
        """The error for a remembered port that another program holds, if `exc` (the control
        server's failure to listen) is that; None otherwise (`exc` says it well)."""
        in_use = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EADDRINUSE
        if self.remembered_in is None or not in_use or len(exc.args) < 2:
            return None
        return ControlPortTaken(exc.args[0], exc.args[1], self.remembered_in)


def choose(control_listen: str, data_dir: Path) -> ControlPort:
    """The control server's host and port (control_listen at port 0: the remembered one, or a
    new one that an outgoing connection cannot take while the master is down)."""
    host, port = split_address(control_listen)
    saved = data_dir / PORT_FILE
    if port == 0 and saved.exists():
        return ControlPort(host, int(saved.read_text()), remembered_in=saved)
    return ControlPort(host, port or stable_free_port(host))


def remember(data_dir: Path, port: int) -> None:
    """Keep the port the control server listens on for the next start."""
    (data_dir / PORT_FILE).write_text(str(port))

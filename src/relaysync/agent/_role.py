"""What the agent's roles (agent/_source_role.py, agent/_target_role.py) share of AgentService
(agent/service.py), which inherits them and sets this state in its __init__ and serve()."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

from relaysync.config.schema import AgentConfig
from relaysync.protocol.messages import TargetSpec
from relaysync.transfer.link_ends import SourceFolder
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.sender import TargetLink


class AgentRole:
    """The state and the link factory both roles use (declared here, set by AgentService)."""

    cfg: AgentConfig
    data_dir: Path
    node_id: str
    _tg: TaskGroup | None

    if TYPE_CHECKING:  # AgentService's: links for a source's or a relay's children

        def _make_link(
            self,
            source: SourceFolder | RelayFeed,
            mapping_id: int,
            target: TargetSpec,
            kind: type[TargetLink] = TargetLink,
            *,
            signatures: bool = True,
        ) -> TargetLink: ...

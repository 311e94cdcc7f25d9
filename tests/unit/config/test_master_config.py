"""The master's monitoring settings load from the environment and are checked by name."""

from __future__ import annotations

import pytest

from relaysync.config.load import load
from relaysync.config.schema import MasterConfig
from relaysync.constants import HEARTBEAT_GRACE_S
from relaysync.errors import ConfigError

BASE = {"data_dir": "/tmp/m"}


def test_the_heartbeat_grace_defaults_and_loads_from_the_environment() -> None:
    assert load(MasterConfig, overrides=BASE, environ={}).heartbeat_grace_s == HEARTBEAT_GRACE_S
    cfg = load(MasterConfig, overrides=BASE, environ={"RELAYSYNC_HEARTBEAT_GRACE_S": "120"})
    assert cfg.heartbeat_grace_s == 120.0


def test_a_negative_heartbeat_grace_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="heartbeat_grace_s"):
        load(MasterConfig, overrides={**BASE, "heartbeat_grace_s": -1}, environ={})

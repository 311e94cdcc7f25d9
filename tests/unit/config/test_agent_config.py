"""An agent's own settings are checked when loaded: a value the links could not use is refused
with the field's name, before the agent joins (not at its first compressed chunk)."""

from __future__ import annotations

import pytest

from relaysync.config.load import load
from relaysync.config.schema import AgentConfig
from relaysync.errors import ConfigError

BASE = {"master_url": "http://127.0.0.1:8470", "name": "a1", "data_dir": "/tmp/a1"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("zstd_level", 23),
        ("zstd_level", -1),
        ("bandwidth_limit_mbit", -5),
        ("hot_file_s", 1e-6),  # re-checked twice a second per microsecond: a busy loop
        ("hot_file_s", float("inf")),  # held files never re-checked
        ("hot_file_s", 7200),
        ("report_outbox_max_mb", 8),  # a drop past it frees a segment (8 MiB), of two at least
    ],
)
def test_out_of_range_link_settings_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        load(AgentConfig, overrides={**BASE, field: value}, environ={})


def test_in_range_settings_load_from_the_environment() -> None:
    cfg = load(
        AgentConfig,
        overrides=BASE,
        environ={
            "RELAYSYNC_ZSTD_LEVEL": "19",
            "RELAYSYNC_BANDWIDTH_LIMIT_MBIT": "2.5",
            "RELAYSYNC_REPORT_OUTBOX_MAX_MB": "512",
        },
    )
    assert (cfg.zstd_level, cfg.bandwidth_limit_mbit) == (19, 2.5)
    assert cfg.report_outbox_max_mb == 512

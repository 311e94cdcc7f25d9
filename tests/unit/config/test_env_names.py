"""RELAYSYNC_* variables that are no setting are named, with the nearest one: a typo such as
RELAYSYNC_MASTER_ULR was silently ignored and the default taken."""

from __future__ import annotations

from relaysync.config.env_names import NOT_SETTINGS, unknown_variables


def test_a_misspelt_variable_is_named_with_the_nearest_setting() -> None:
    environ = {"RELAYSYNC_MASTER_ULR": "http://h:1", "RELAYSYNC_LISTN": "0.0.0.0:1", "HOME": "/"}
    assert unknown_variables(environ) == [
        "RELAYSYNC_LISTN is not a relaysync setting (did you mean RELAYSYNC_LISTEN?); ignored",
        "RELAYSYNC_MASTER_ULR is not a relaysync setting (did you mean RELAYSYNC_MASTER_URL?); "
        "ignored",
    ]


def test_an_unlike_variable_is_named_alone() -> None:
    assert unknown_variables({"RELAYSYNC_QQQQQQQ": "1"}) == [
        "RELAYSYNC_QQQQQQQ is not a relaysync setting; ignored"
    ]


def test_settings_of_every_process_and_the_test_variables_are_known() -> None:
    """The master's, the agent's and the commands' settings, and what scripts/test, the test
    hooks and the benchmarks read: a shell may hold any of them for any relaysync process."""
    environ = {
        "RELAYSYNC_HEARTBEAT_GRACE_S": "30",  # master
        "RELAYSYNC_MASTER_URL": "http://h:1",  # agent
        "RELAYSYNC_MASTER": "http://h:1",  # operator commands
        "RELAYSYNC_TOKEN": "t",  # agent and commands
        "RELAYSYNC_TEST_WORKERS": "1",  # scripts/test
        "RELAYSYNC_TEST_CORRUPT_DELTAS": "1",  # agent/link_options.py
        "RELAYSYNC_BENCH_PG_URL": "postgresql://",  # bench/joblog.py
        "relaysync_listn": "x",  # not the prefix: environment names are case-sensitive
    }
    assert unknown_variables(environ) == []
    assert {"RELAYSYNC_TEST_WORKERS", "RELAYSYNC_BENCH_PG_URL"} <= NOT_SETTINGS

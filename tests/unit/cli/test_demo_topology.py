"""`relaysync demo --topology R:G:S`: spec parsing and validation, target naming, the plan tree."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from relaysync.cli.app import app
from relaysync.cli.demo_cmd import (
    MAX_DEMO_SERVERS,
    DemoTarget,
    Topology,
    demo_targets,
    parse_topology,
    plan_complete,
    plan_tree,
)
from relaysync.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("2:2:2", Topology(2, 2, 2)),
        ("1:1:1", Topology(1, 1, 1)),
        (" 4:4:4 ", Topology(4, 4, 4)),
        ("1:1:64", Topology(1, 1, 64)),
        ("2:4:8", Topology(2, 4, 8)),
    ],
)
def test_valid_specs(spec: str, shape: Topology) -> None:
    assert parse_topology(spec) == shape


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2:2", "expected R:G:S"),
        ("2:2:2:2", "expected R:G:S"),
        ("", "expected R:G:S"),
        ("0:2:2", "regions must be a positive integer"),
        ("2:0:2", "groups per region must be a positive integer"),
        ("2:2:0", "servers per group must be a positive integer"),
        ("2:-1:2", "groups per region must be a positive integer"),
        ("2:x:2", "groups per region must be a positive integer"),
        ("2:2:1.5", "servers per group must be a positive integer"),
        ("2::2", "groups per region must be a positive integer"),
        ("4:4:5", f"80 servers, at most {MAX_DEMO_SERVERS}"),
        ("1:1:65", f"65 servers, at most {MAX_DEMO_SERVERS}"),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_topology(spec)


def test_targets_are_named_and_placed_by_region_and_group() -> None:
    targets = Topology(2, 2, 2).targets()
    assert [t.name for t in targets] == [
        "r1g1s1",
        "r1g1s2",
        "r1g2s1",
        "r1g2s2",
        "r2g1s1",
        "r2g1s2",
        "r2g2s1",
        "r2g2s2",
    ]
    assert targets[3] == DemoTarget("r1g2s2", "r1", "r1g2")
    assert {t.region for t in targets} == {"r1", "r2"}
    assert len({t.group for t in targets}) == 4


def test_targets_and_topology_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        demo_targets(3, "1:1:1")


def test_flat_targets_stay_as_before() -> None:
    assert demo_targets(None, None)[0] == [
        DemoTarget(f"target-{i}", "default", "default") for i in (1, 2)
    ]
    members, shape = demo_targets(5, None)
    assert shape is None and [t.name for t in members][-1] == "target-5"
    members, shape = demo_targets(None, "1:2:3")
    assert shape == Topology(1, 2, 3) and len(members) == 6


@pytest.mark.parametrize(
    "args", [["--targets", "2", "--topology", "1:1:1"], ["--topology", "0:1:1"]]
)
def test_cli_refuses_bad_input_before_starting_anything(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert not (tmp_path / ".relaysync").exists()


def test_plan_tree_shows_who_sends_to_whom_with_levels() -> None:
    members = {t.name: t for t in Topology(2, 1, 2).targets()}
    routes = {
        "source": "source",
        "mode": "auto",
        "unreachable": [],
        "hops": [
            {"parent": "source", "child": "r1g1s1", "level": "region-entry"},
            {"parent": "source", "child": "r2g1s1", "level": "region-entry"},
            {"parent": "r1g1s1", "child": "r1g1s2", "level": "in-group"},
            {"parent": "r2g1s1", "child": "r2g1s2", "level": "in-group"},
        ],
    }
    assert plan_complete(routes, set(members))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(plan_tree(routes, members))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert "source" in lines[0] and "4 hops" in lines[0]
    assert [line.strip(" │├└─").split()[0] for line in lines[1:]] == [
        "r1g1s1",
        "r1g1s2",
        "r2g1s1",
        "r2g1s2",
    ]
    assert "r1/r1g1 · region-entry · level 1" in lines[1]
    assert "in-group · level 2" in lines[2]


def test_a_plan_missing_a_target_is_not_complete_and_a_star_is_drawn_flat() -> None:
    members = {t.name: t for t in Topology(1, 1, 2).targets()}
    partial = {
        "source": "source",
        "hops": [{"parent": "source", "child": "r1g1s1", "level": "region-entry"}],
        "unreachable": [],
    }
    assert not plan_complete(partial, set(members))
    assert plan_complete({**partial, "unreachable": ["r1g1s2"]}, set(members))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(plan_tree({"source": "source", "hops": [], "unreachable": []}, members))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.count("direct · level 1") == 2

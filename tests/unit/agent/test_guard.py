"""The agent's own folder check: system folders, its data directory, allowed_roots, symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.agent.guard import check_folder, parse_roots
from relaysync.errors import ConfigError, FolderRefused


@pytest.mark.parametrize(
    "path", ["/", "/etc", "/usr/", "//usr", "/boot/efi", "/proc/self", "/var/lib"]
)
def test_system_folders_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(
        FolderRefused, match=f"target folder {path} of mapping 7 is refused by this agent: .*system"
    ):
        check_folder(path, role="target", mapping_id=7, data_dir=tmp_path / "data")


def test_a_symlink_to_a_system_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "www").symlink_to("/etc")
    with pytest.raises(FolderRefused, match="/etc is a system folder"):
        check_folder(str(tmp_path / "www"), role="target", mapping_id=1, data_dir=tmp_path / "data")
    (tmp_path / "deep").symlink_to("/usr")
    with pytest.raises(FolderRefused, match="/usr is a system folder"):
        check_folder(
            str(tmp_path / "deep" / "."), role="source", mapping_id=1, data_dir=tmp_path / "data"
        )


@pytest.mark.parametrize("folder", [".", "data", "data/targets/3"])
def test_a_folder_overlapping_the_data_directory_is_refused(tmp_path: Path, folder: str) -> None:
    """Around it, a target's comparison erases the journals and keys; inside it, it overwrites them.
    As a source, the journal's own writes would be changes to journal, for ever."""
    data = tmp_path / "data"
    (data / "targets" / "3").mkdir(parents=True)
    with pytest.raises(FolderRefused, match="this agent's data directory .* contain each other"):
        check_folder(str(tmp_path / folder), role="target", mapping_id=3, data_dir=data)


def test_allowed_roots_confine_the_folders(tmp_path: Path) -> None:
    roots = parse_roots(f" {tmp_path}/www , {tmp_path}/shared/")
    check_folder(
        str(tmp_path / "www"),
        role="target",
        mapping_id=1,
        data_dir=tmp_path / "d",
        allowed_roots=roots,
    )
    check_folder(
        str(tmp_path / "shared/a/b"),
        role="source",
        mapping_id=1,
        data_dir=tmp_path / "d",
        allowed_roots=roots,
    )
    for outside in ("wwwx", "other", "www/../other"):
        with pytest.raises(FolderRefused, match="is outside allowed_roots"):
            check_folder(
                str(tmp_path / outside),
                role="target",
                mapping_id=1,
                data_dir=tmp_path / "d",
                allowed_roots=roots,
            )
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "escape").symlink_to(tmp_path / "other")
    with pytest.raises(FolderRefused, match="outside allowed_roots"):
        check_folder(
            str(tmp_path / "www" / "escape"),
            role="target",
            mapping_id=1,
            data_dir=tmp_path / "d",
            allowed_roots=roots,
        )


def test_ordinary_folders_pass_without_allowed_roots(tmp_path: Path) -> None:
    for path in ("/srv/www", "/var/www", "/etc/nginx/sites", str(tmp_path / "dst")):
        check_folder(path, role="target", mapping_id=1, data_dir=tmp_path / "data")


@pytest.mark.parametrize("text", ["srv", "/srv,relative", "/srv/../etc"])
def test_bad_allowed_roots_stop_the_agent(text: str) -> None:
    with pytest.raises(ConfigError, match="allowed_roots"):
        parse_roots(text)
    assert parse_roots("") == ()

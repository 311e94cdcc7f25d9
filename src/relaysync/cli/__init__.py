"""The `relaysync` command line: one typer app, one module per subcommand."""

from __future__ import annotations


def main() -> None:
    """Entry point of the `relaysync` console script."""
    from relaysync.cli.app import app

    app()

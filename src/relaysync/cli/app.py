"""The typer app that gathers every subcommand module."""

from __future__ import annotations

import typer

from relaysync.cli import agent_cmd, demo_cmd, master_cmd

app = typer.Typer(
    name="relaysync",
    help="Keep a fleet of servers, and the caches in front of them, identical to their origin.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("master")(master_cmd.master)
app.command("agent")(agent_cmd.agent)
app.command("demo")(demo_cmd.demo)

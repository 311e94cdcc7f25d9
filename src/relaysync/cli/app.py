"""The typer app that gathers every subcommand module."""

from __future__ import annotations

import typer

from relaysync.cli import (
    agent_cmd,
    demo_cmd,
    log_cmd,
    mapping_cmd,
    master_cmd,
    nmjob_cmd,
    recover_cmd,
    recovery_cmd,
    restore_cmd,
    retention_cmd,
    routes_cmd,
    send_cmd,
    server_cmd,
    stats_cmd,
    status_cmd,
    token_cmd,
    topology_cmd,
)
from relaysync.cli._run import err_console
from relaysync.cli._shown import shown
from relaysync.config.env_names import unknown_variables

app = typer.Typer(
    name="relaysync",
    help="Keep a fleet of servers, and the caches in front of them, identical to their origin.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _warn_unknown_variables() -> None:
    """Before any command, in this process only: a misspelt RELAYSYNC_* variable is named on
    stderr (stdout stays the command's, for pipes), once; it would be ignored in silence."""
    for line in unknown_variables():
        err_console.print(shown(f"warning: {line}"), markup=False, highlight=False, soft_wrap=True)


app.command("master")(master_cmd.master)
app.command("agent")(agent_cmd.agent)
app.command("demo")(demo_cmd.demo)
app.command("status")(status_cmd.status)
app.command("log")(log_cmd.log)
app.command("stats")(stats_cmd.stats)
app.command("retention")(retention_cmd.retention)
app.command("send")(send_cmd.send)
app.command("restore")(restore_cmd.restore)
app.command("topology")(topology_cmd.topology)
app.command("routes")(routes_cmd.routes)
app.command("recovery")(recovery_cmd.recovery)
app.command("recover")(recover_cmd.recover)
app.add_typer(mapping_cmd.app, name="mapping")
app.add_typer(server_cmd.app, name="server")
app.add_typer(nmjob_cmd.app, name="nmjob")
app.add_typer(token_cmd.app, name="token")

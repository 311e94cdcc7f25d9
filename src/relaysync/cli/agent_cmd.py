"""`relaysync agent`: run the daemon of one server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from relaysync.cli._run import (
    check_data_dir,
    err_console,
    errors_as_exit,
    run_service,
    setup_logging,
)
from relaysync.config.load import ENV_PREFIX, check_master_url, load
from relaysync.config.schema import AgentConfig

# the command-line option of each required setting, named when it is missing
OPTIONS = {"master_url": "--master", "name": "--name", "data_dir": "--data"}


def agent(
    master: Annotated[
        str | None, typer.Option("--master", help="Master API URL, http://host:port.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="This server's name in the fleet.")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Data directory (identity, journals, manifests).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Join string from the master (first start only): `relaysync token "
            "create-join` prints one, the master's data_dir/join-token holds one. It names the "
            "fleet's CA: the agent refuses a master with another."
        ),
    ] = None,
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(
            help="SHA-256 of the master's data_dir/ca/ca.pem, for a --token without it (an "
            "older join token): `openssl x509 -noout -fingerprint -sha256 -in ca.pem`."
        ),
    ] = None,
    insecure_first_join: Annotated[
        bool,
        typer.Option(
            "--insecure-first-join",
            help="Join with a --token that names no CA, trusting whichever master answers at "
            "--master. Only where nobody can answer in its place.",
        ),
    ] = False,
    allow_plain_http_join: Annotated[
        bool,
        typer.Option(
            "--allow-plain-http-join",
            help="Send the join token over plain http:// to a master on another host (in "
            "clear). Only where nobody can read the traffic; use https:// otherwise.",
        ),
    ] = False,
    api_ca_file: Annotated[
        str | None,
        typer.Option(
            help="CA certificate(s) of the master's own API certificate (api_tls = files), "
            "for the first join; required for such a master (certifi's bundle and "
            "SSL_CERT_FILE are not used for a join)."
        ),
    ] = None,
    region: Annotated[str | None, typer.Option(help="Region of this server.")] = None,
    group: Annotated[
        str | None, typer.Option(help="Group of this server within its region.")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="Peer server host:port (port 0: any).")] = None,
    advertise_host: Annotated[
        str | None,
        typer.Option(
            help="Address other servers reach this agent at; default: the listen host, or "
            "with 0.0.0.0 this host's address on the route to the master."
        ),
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="Serve Prometheus /metrics on host:port (port 0: any); default off."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file.")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON logs for machines.")] = False,
) -> None:
    """Run an agent: watch source folders, serve target folders, report to the master."""
    from relaysync.agent.service import AgentService

    with errors_as_exit():
        cfg = load(
            AgentConfig,
            path=config,
            options=OPTIONS,
            overrides={
                "master_url": master,
                "name": name,
                "data_dir": str(data) if data else None,
                "token": token,
                "ca_fingerprint": ca_fingerprint,
                "insecure_first_join": insecure_first_join or None,
                "allow_plain_http_join": allow_plain_http_join or None,
                "api_ca_file": api_ca_file,
                "region": region,
                "group": group,
                "listen": listen,
                "advertise_host": advertise_host,
                "log_json": log_json or None,
                "metrics_listen": metrics_listen,
            },
        )
        check_master_url(cfg.master_url, _given_as("master_url", master, config))
        check_data_dir(Path(cfg.data_dir))
        setup_logging(json_logs=cfg.log_json)
        service = AgentService(cfg)  # checks some settings too

    def started(port: Any) -> None:
        err_console.print(f"relaysync agent {cfg.name} ready: peer port {port}")

    run_service(service.serve, started)


def _given_as(field: str, option: str | None, config: Path | None) -> str:
    """Where a setting came from, for its error, in the precedence `load` applies: the option,
    the RELAYSYNC_ variable, the file."""
    variable = f"{ENV_PREFIX}{field.upper()}"
    if option is not None:
        return OPTIONS.get(field, f"--{field}")
    if variable in os.environ or config is None:
        return variable
    return f"{field} in {config}"

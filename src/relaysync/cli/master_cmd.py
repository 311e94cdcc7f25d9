"""`relaysync master`: run the coordinator (REST API, control server, store)."""

from __future__ import annotations

from enum import StrEnum
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
from relaysync.config.load import load
from relaysync.config.schema import MasterConfig


class ApiTlsMode(StrEnum):  # MasterConfig.api_tls, as typer shows the choices
    AUTO = "auto"
    FLEET = "fleet"
    FILES = "files"
    OFF = "off"


def master(
    data: Annotated[Path, typer.Option("--data", help="Data directory (store, CA, tokens).")],
    listen: Annotated[str | None, typer.Option(help="REST API host:port.")] = None,
    control_listen: Annotated[
        str | None, typer.Option(help="Agents' control port host:port.")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL; default SQLite in --data.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file.")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON logs for machines.")] = False,
    purge_listen: Annotated[
        str | None, typer.Option(help="Purge listener host:port (origins outside the fleet).")
    ] = None,
    api_tls: Annotated[
        ApiTlsMode | None,
        typer.Option(
            help="HTTPS of the API: auto (default: off on loopback, else fleet), fleet (a "
            "certificate from the fleet's CA), files (--api-cert-file, --api-key-file), off."
        ),
    ] = None,
    api_cert_file: Annotated[
        str | None, typer.Option(help="PEM certificate for --api-tls files.")
    ] = None,
    api_key_file: Annotated[str | None, typer.Option(help="Its PEM private key.")] = None,
    api_names: Annotated[
        str | None,
        typer.Option(help="More DNS names or IPs for the fleet certificate, comma-separated."),
    ] = None,
) -> None:
    """Run the master: REST API, control server for agents, store and job log."""
    from relaysync.master.service import MasterService

    with errors_as_exit():
        cfg = load(
            MasterConfig,
            path=config,
            overrides={
                "data_dir": str(data),
                "listen": listen,
                "control_listen": control_listen,
                "database_url": database_url,
                "log_json": log_json or None,
                "purge_listen": purge_listen,
                "api_tls": api_tls.value if api_tls else None,
                "api_cert_file": api_cert_file,
                "api_key_file": api_key_file,
                "api_names": api_names,
            },
        )
        check_data_dir(data)
        setup_logging(json_logs=cfg.log_json)
        service = MasterService(cfg)  # checks some settings too

    def started(api_url: Any) -> None:
        err_console.print(
            f"relaysync master ready: api {api_url} control {service.control_address}"
        )
        err_console.print(f"join token: {data / 'join-token'}  admin token: {data / 'admin-token'}")
        err_console.print(f"CA fingerprint (in every join string): {service.ca_fingerprint}")

    run_service(service.serve, started)

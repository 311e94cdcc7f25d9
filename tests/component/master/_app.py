"""The master's API app as the component tests build it: a store, a fresh CA, the admin token."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from relaysync.auth.ca import CertificateAuthority
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store

ADMIN = "admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def admin_app(store: Store, tmp_path: Path) -> FastAPI:
    """The API over `store`, its CA under tmp_path/ca; ADMIN is its admin token."""
    return create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(tmp_path / "ca"),
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
    )

"""REST resource /api/health: is the master up (no token needed)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from relaysync import __version__

logger = logging.getLogger(__name__)


class HealthOut(BaseModel):
    status: str = "ok"
    version: str


async def get_health() -> HealthOut:
    """The master answers: it is up."""
    return HealthOut(version=__version__)

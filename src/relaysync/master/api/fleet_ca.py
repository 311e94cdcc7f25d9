"""REST resource /api/ca: the fleet's CA certificate (no token needed: it is public).

An agent about to join over HTTPS fetches it without checking the server's certificate,
compares its SHA-256 with the fingerprint its join string carries, and only then sends its
token, over a connection checked against that CA (agent/enrollment.py).
"""

from __future__ import annotations

from pydantic import BaseModel

from relaysync.master.api._context import Context


class CaOut(BaseModel):
    ca_pem: str  # the fleet CA's certificate, PEM
    ca_fingerprint: str  # SHA-256 of its DER, hex: what join strings carry


def get_ca(context: Context) -> CaOut:
    """The fleet's CA certificate and its fingerprint."""
    return CaOut(ca_pem=context.ca.ca_pem.decode(), ca_fingerprint=context.ca.ca_fingerprint)

"""Probes the master runs: TCP connect to a port, and ICMP echo with the system `ping` (iputils).

Error handling: a probe never raises for a down target; it returns a failed ProbeResult with the
reason. Only a missing `ping` binary is reported as such in the result.
Resource handling: every probe runs under its own timeout; ping runs as a child process that is
killed when the timeout passes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass

import anyio

from relaysync.monitor.types import ProbeRule

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None
    detail: str  # "" when ok; else why it failed
    at: float  # unix time


async def tcp_probe(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Return whether a TCP connection to host:port opens within timeout_s."""
    started = time.monotonic()
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(host, port)
        await stream.aclose()
    except TimeoutError:
        return ProbeResult(
            ok=False, latency_ms=None, detail=f"no answer in {timeout_s:g} s", at=time.time()
        )
    except OSError as exc:
        # anyio reports "All connection attempts failed"; the reason is the cause it chains.
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        # asyncio words it "Connect call failed (...)", uvloop "Connection refused": say the errno's
        # name. A resolver error's code is an EAI_* value, not an errno: its own text says it.
        code = 0 if isinstance(cause, socket.gaierror) else max(cause.errno or 0, 0)
        detail = os.strerror(code) if code else (cause.strerror or str(cause))
        return ProbeResult(ok=False, latency_ms=None, detail=detail, at=time.time())
    return ProbeResult(
        ok=True, latency_ms=(time.monotonic() - started) * 1000, detail="", at=time.time()
    )


async def ping_probe(host: str, timeout_s: float) -> ProbeResult:
    """Return whether `host` answers one ICMP echo within timeout_s (the system ping binary)."""
    ping = shutil.which("ping")
    if ping is None:
        return ProbeResult(
            ok=False,
            latency_ms=None,
            at=time.time(),
            detail="no ping binary: install iputils-ping (scripts/install does)",
        )
    wait_s = max(1, math.ceil(timeout_s))  # ping -W takes whole seconds on older iputils
    started = time.monotonic()
    with anyio.move_on_after(timeout_s + 1):
        result = await anyio.run_process(
            [ping, "-n", "-c", "1", "-W", str(wait_s), "--", host], check=False
        )
        if result.returncode == 0:
            return ProbeResult(
                ok=True, latency_ms=(time.monotonic() - started) * 1000, detail="", at=time.time()
            )
        out = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        return ProbeResult(
            ok=False,
            latency_ms=None,
            at=time.time(),
            detail=out[-1] if out else f"ping exited {result.returncode}",
        )
    return ProbeResult(
        ok=False, latency_ms=None, detail=f"no answer in {timeout_s:g} s", at=time.time()
    )


async def run_probe(rule: ProbeRule) -> ProbeResult:
    """Run one configured probe."""
    if rule.kind == "tcp":
        return await tcp_probe(rule.host, rule.port, rule.timeout_s)
    return await ping_probe(rule.host, rule.timeout_s)

"""The RELAYSYNC_* environment variables relaysync knows, and the ones it would ignore.

A variable is known when it sets a field of any process's configuration (the master's, an
agent's, the operator commands'): one shell may hold them all. A few more are read outside the
settings, by the tests and benchmarks (NOT_SETTINGS). Any other RELAYSYNC_* variable is most
likely a typo (RELAYSYNC_MASTER_ULR), which would leave the default in place without a word: the
CLI warns about it, and only warns, since the environment may hold another release's settings.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

import msgspec

from relaysync.config.load import ENV_PREFIX
from relaysync.config.schema import AgentConfig, CliConfig, MasterConfig

NOT_SETTINGS = frozenset(
    {
        "RELAYSYNC_TEST_WORKERS",  # scripts/test: how many pytest workers
        "RELAYSYNC_TEST_CORRUPT_DELTAS",  # agent/link_options.py: a test hook of the agents
        "RELAYSYNC_BENCH_PG_URL",  # bench/joblog.py: a PostgreSQL to measure on
    }
)


def known_variables() -> frozenset[str]:
    """Every RELAYSYNC_* variable some relaysync process or script reads."""
    kinds = (MasterConfig, AgentConfig, CliConfig)
    fields = {field.name for kind in kinds for field in msgspec.structs.fields(kind)}
    return frozenset(ENV_PREFIX + name.upper() for name in fields) | NOT_SETTINGS


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line for each RELAYSYNC_* variable of `environ` (default: this process's) that no
    relaysync process reads, with the nearest known one, sorted by name."""
    env = os.environ if environ is None else environ
    known = known_variables()
    names = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known)
    return [_unknown(name, known) for name in names]


def _unknown(name: str, known: frozenset[str]) -> str:
    # compared without the prefix every name shares, which would make any two look alike
    stem = name.removeprefix(ENV_PREFIX)
    stems = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    near = difflib.get_close_matches(stem, stems, n=1)
    hint = f" (did you mean {ENV_PREFIX}{near[0]}?)" if near else ""
    return f"{name} is not a relaysync setting{hint}; ignored"

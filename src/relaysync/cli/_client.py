"""The operator commands' REST client: where the master is, its token, and errors as exit codes.

The master's URL is, in order: `--master URL`, the `master.json` of `--data DIR`, `RELAYSYNC_MASTER`,
then the `master.json` of `RELAYSYNC_MASTER_DATA` (a master's data directory on this host). The
token is `--token`, then `RELAYSYNC_TOKEN`, then that data directory's `admin-token`. An https
master's certificate is checked against `--ca-file`, then `RELAYSYNC_CA_FILE`, then that data
directory's fleet CA (for a master serving the fleet's certificate), else what httpx trusts:
SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's bundle (not the system's store). Whatever
the CA file holds, a certificate from a fleet CA is taken only if it is the master's.

Error handling:
    Every failure surfaces as a RelaySyncError: a master that does not answer, or a server that
    answers with something other than JSON (not the master's API), is MasterUnreachable; a
    certificate not trusted here ApiCertificateRefused; 401/403 AuthError; 404 NotFound; 422 ConfigError; other statuses
    StoreError or RelaySyncError, with the master's `detail`. `run_command` prints the
    message and exits with the error's `exit_code`.

Resource handling:
    A MasterClient owns one httpx.Client; use it as a context manager.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console

from relaysync._util.untrusted_text import csv_cell
from relaysync.auth.api_trust import certificate_problem, default_api_context, file_api_context
from relaysync.cli._run import errors_as_exit
from relaysync.cli._shown import shown
from relaysync.config.load import check_master_url, load
from relaysync.config.schema import CliConfig
from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import (
    ApiCertificateRefused,
    AuthError,
    ConfigError,
    MasterUnreachable,
    NotFound,
    RelaySyncError,
    StoreError,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a master on the LAN answers a connect at once; fail fast when it is down
T = TypeVar("T")

# Options every operator command takes.
MasterOption = Annotated[
    str | None,
    typer.Option(
        "--master",
        help="Master API URL, http://host:port (default: RELAYSYNC_MASTER, then --data).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Admin or API token (default: RELAYSYNC_TOKEN, then the data dir's admin-token).",
        show_default=False,
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data", help="A master's data directory on this host (default: RELAYSYNC_MASTER_DATA)."
    ),
]
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        help="CA certificate to check an https master with (default: RELAYSYNC_CA_FILE, then "
        "the fleet CA of --data).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")
]


class MissingResource(NotFound):
    """{}: {}"""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to reach the master, and with which token."""

    url: str
    token: str
    ca_file: str = ""  # what an https master's certificate is checked with; "": certifi's bundle


def resolve_target(
    *,
    master: str | None = None,
    token: str | None = None,
    data: Path | None = None,
    ca_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Resolve the master's URL and token from the options, the environment and a data dir.

    Raises:
        ConfigError: no master URL from any source, an unreadable data directory, or a token
            that cannot be sent in an HTTP header.
    """
    cfg = load(CliConfig, environ=environ)
    data_dir = data or (Path(cfg.master_data) if cfg.master_data else None)
    url, source = _master_url(master, data, cfg.master, data_dir)
    if not url:
        raise ConfigError(
            "no master: give --master URL, set RELAYSYNC_MASTER, or point --data "
            "(or RELAYSYNC_MASTER_DATA) at the master's data directory"
        )
    url = check_master_url(url, source)
    secret = token or cfg.token
    if not secret and data_dir is not None:
        secret = _read_text(data_dir / "admin-token")
    if not (secret.isascii() and secret.isprintable()):
        raise ConfigError(
            "the token holds a character no relaysync token has (not printable ASCII): "
            "check --token, RELAYSYNC_TOKEN or the admin-token file"
        )
    trust = _trust_for(url, str(ca_file or "") or cfg.ca_file, data_dir)
    return Target(url=url.rstrip("/"), token=secret, ca_file=trust)


def _master_url(
    master: str | None, data: Path | None, from_env: str, data_dir: Path | None
) -> tuple[str, str]:
    """The master's URL and where it was given (named if it is not a URL), "" if nowhere."""
    if master:
        return master, "--master"
    if data is not None and (url := _url_from(data)):
        return url, f"api_url in {data / 'master.json'}"
    if from_env:
        return from_env, "RELAYSYNC_MASTER"
    if data_dir is not None:
        return _url_from(data_dir), f"api_url in {data_dir / 'master.json'}"
    return "", ""


def _trust_for(url: str, ca_file: str, data_dir: Path | None) -> str:
    """The CA file to check an https master with: the one given, else the fleet CA of a local
    master that serves the fleet's certificate, else "" (SSL_CERT_FILE, or certifi's bundle)."""
    if urlsplit(url).scheme != "https":
        return ""
    if ca_file or data_dir is None:
        return ca_file
    try:
        mode = json.loads((data_dir / "master.json").read_text()).get("api_tls")
    except (OSError, ValueError, AttributeError):
        return ""
    return str(data_dir / "ca" / "ca.pem") if mode == "fleet" else ""


def _url_from(data_dir: Path) -> str:
    if not (data_dir / "master.json").exists():
        what = "no such directory" if not data_dir.exists() else "no master.json in it"
        raise ConfigError(
            f"{data_dir} is not a running master's data directory ({what}): give the --data "
            "of `relaysync master` on this host (it writes master.json once it listens), or "
            "--master URL"
        )
    raw = _read_text(data_dir / "master.json")
    try:
        url = json.loads(raw)["api_url"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{data_dir / 'master.json'}: no api_url ({exc})") from exc
    return str(url)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc


def _verify_for(target: Target) -> ssl.SSLContext:
    """The TLS context an https master is checked with (an http one never uses it)."""
    return file_api_context(Path(target.ca_file)) if target.ca_file else default_api_context()


class MasterClient:
    """Synchronous calls to the master's REST API, with explicit timeouts."""

    def __init__(self, target: Target, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self.url = check_master_url(target.url)
        try:
            self._http = httpx.Client(
                base_url=self.url,
                headers=headers,
                transport=transport,
                timeout=httpx.Timeout(HTTP_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                verify=_verify_for(target),
            )
        except httpx.InvalidURL as exc:  # what check_master_url let through, httpx did not
            raise ConfigError(f"--master must be http(s)://host:port, got {self.url!r}") from exc

    def __enter__(self) -> MasterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        """GET `path` with the given query params (None dropped); return the decoded JSON."""
        return self._json(self.request("GET", path, params=params))

    def get_text(self, path: str, **params: Any) -> str:
        """GET `path`; return the body as text (e.g. CSV)."""
        return self.request("GET", path, params=params).text

    def post(self, path: str, body: Any) -> Any:
        return self._json(self.request("POST", path, json=body))

    def put(self, path: str, body: Any) -> Any:
        return self._json(self.request("PUT", path, json=body))

    def patch(self, path: str, body: Any) -> Any:
        return self._json(self.request("PATCH", path, json=body))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def _json(self, response: httpx.Response) -> Any:
        """Decode a 2xx answer; one that is not JSON comes from something that is not the master.

        Raises:
            MasterUnreachable: naming the URL and what answered.
        """
        try:
            return response.json()
        except ValueError as exc:
            what = response.headers.get("content-type") or "no content type"
            raise MasterUnreachable(
                self.url,
                f"{response.request.method} {response.request.url.path}: the answer is not JSON "
                f"({what}), so this is not the master's API URL",
            ) from exc

    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> httpx.Response:
        """Send one request and return its 2xx response.

        Raises:
            MasterUnreachable, AuthError, NotFound, ConfigError, StoreError, RelaySyncError.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=query, json=json)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, f"{method} {path}") from exc
        if response.is_success:
            return response
        raise error_for(response, f"{method} {path}")

    def _unreachable(self, exc: httpx.TransportError, operation: str) -> RelaySyncError:
        """A refused certificate (with what to do about it), or a master that does not answer."""
        why = certificate_problem(exc)
        if why is not None:
            return ApiCertificateRefused(self.url, why, UNTRUSTED_REMEDY)
        detail = f"{operation}: {str(exc).rstrip('.') or type(exc).__name__}"
        if urlsplit(self.url).scheme == "http" and isinstance(exc, httpx.RemoteProtocolError):
            detail += " (a master that serves HTTPS drops plain http: use https://)"
        return MasterUnreachable(self.url, detail)


UNTRUSTED_REMEDY = (
    "give --ca-file (or RELAYSYNC_CA_FILE) with the CA that issued the master's certificate: for "
    "api_tls = fleet the master's data_dir/ca/ca.pem (or run beside the master with --data <its "
    "data dir>), and the URL's host must be one of the certificate's names (the master's listen "
    "host, its host name and addresses, api_names); for api_tls = files the CA of the "
    "operator's certificate, unless certifi's bundle (or SSL_CERT_FILE) already trusts it"
)


def error_for(response: httpx.Response, operation: str) -> RelaySyncError:
    """Map a non-2xx answer of the master to the relaysync error an operator can act on."""
    detail = _detail(response)
    status = response.status_code
    if status == 401:
        return AuthError(
            f"{operation}: {_unprefixed(detail, AuthError)} (check --token or RELAYSYNC_TOKEN)"
        )
    if status == 403:
        return AuthError(f"{operation}: {_unprefixed(detail, AuthError)}")
    if status == 404:
        return MissingResource(operation, detail)
    if status in (400, 409, 422):
        return ConfigError(f"{operation}: {_unprefixed(detail, ConfigError)}")
    if status == 503:
        return StoreError(f"{operation}: {_unprefixed(detail, StoreError)}")
    return RelaySyncError(f"{operation}: HTTP {status}: {detail}")


def _unprefixed(detail: str, kind: type[RelaySyncError]) -> str:
    """The master's `detail` without the prefix the client's error of `kind` adds again (it
    says "Configuration error: ..." too): printed once, not twice."""
    prefix = str(kind("")).strip()  # "Configuration error:"
    return detail[len(prefix) :].lstrip() if detail.startswith(prefix) else detail


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', '')}" for d in detail
        )
    return str(detail)


@contextmanager
def connect(
    master: str | None, token: str | None, data: Path | None, ca_file: Path | None = None
) -> Iterator[MasterClient]:
    """A MasterClient for the resolved target, closed afterwards."""
    target = resolve_target(master=master, token=token, data=data, ca_file=ca_file)
    with MasterClient(target) as client:
        yield client


def run_command(body: Callable[[], T]) -> T:
    """Run an operator command; print a relaysync error and exit with its code."""
    with errors_as_exit():
        return body()


# --- Output ---

PIPED_WIDTH = 1000  # columns of output that goes to a pipe or a file: tables whole, not cut


def _output_width() -> int | None:
    """None (the terminal's width, or COLUMNS) on a terminal; wide when piped: rich assumed 80
    columns there and cut a 13-column table's headers and numbers to "ma… 381…" for scripts."""
    if os.environ.get("COLUMNS"):
        return None
    try:  # no stdout at all (`>&-`): rich copes, and the width does not matter
        terminal = sys.stdout is not None and sys.stdout.isatty()
    except (AttributeError, ValueError, OSError):
        terminal = False
    return None if terminal else PIPED_WIDTH


console = Console(highlight=False, width=_output_width())


def print_json(document: Any) -> None:
    """Print one JSON document on stdout, plain (no colour), for scripts."""
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as CSV with a header line; missing values are empty cells.

    Text cells are `csv_text_cell`s: printed on a terminal (`cat`) and opened in a spreadsheet."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows({c: csv_text_cell(r.get(c)) for c in columns} for r in rows)
    return out.getvalue()


def csv_text_cell(value: Any) -> Any:
    """A CSV cell the CLI prints: "" for None; text with its control characters visible (a file
    name's ESC went to the terminal of whoever ran `cat` on the file; its newline broke the
    line) and, when it starts like a formula, a leading `'`; numbers as they are."""
    if value is None:
        return ""
    return csv_cell(shown(value)) if isinstance(value, str) else value


def reprinted_csv(text: str) -> str:
    """CSV from the master (its cells raw, formulas already neutralised) with its text cells
    made `csv_text_cell`s, for the terminal."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([csv_text_cell(c) for c in row] for row in csv.reader(io.StringIO(text)))
    return out.getvalue()


def format_time(unix_s: float | None, *, now_s: float | None = None) -> str:
    """`2024-05-01 12:00:03 (4 s ago)` in local time; `never` for None."""
    if unix_s is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))
    ago_s = (time.time() if now_s is None else now_s) - unix_s
    return f"{stamp} ({format_duration(ago_s)} ago)" if ago_s >= 0 else stamp


def format_duration(seconds: float) -> str:
    """`42 s`, `3 min`, `5 h`, `2 d`."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def format_bytes(n: float | None) -> str:
    """`0 B`, `1.5 KiB`, `12.0 MiB`."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable: the loop returns at TiB

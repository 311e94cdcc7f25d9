"""A tiny origin web server for tests, the demo and benchmarks: it serves a folder the way nginx
does with `gzip on; gzip_vary on; gzip_min_length 1`: gzip to clients that accept it,
`Vary: Accept-Encoding` on every file, and 403 for a file others may not read (nginx's worker
runs unprivileged). A request can ask it to hold its answer back (DELAY_HEADER): a slow origin,
or a slow client's fetch through a cache.
"""

from __future__ import annotations

import email.utils
import functools
import os
import shutil
import stat
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


DELAY_HEADER = "X-Origin-Delay"  # seconds the origin holds its answer, or a name to wait for
MAX_DELAY_S = 30.0


class LateAnswers:
    """Answers the origin holds back on request (DELAY_HEADER): a slow origin, or a slow
    client's fetch through a cache, that read a file or directory before a change and ends
    after it. The header holds seconds, or a name: the answer waits until `release(name)`
    (at most MAX_DELAY_S)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released: dict[str, threading.Event] = {}
        self.read = 0  # held answers that have read what they serve

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._released.setdefault(name, threading.Event())

    def hold(self, value: str) -> None:
        with self._lock:
            self.read += 1
        try:
            seconds = float(value)
        except ValueError:
            self._event(value).wait(MAX_DELAY_S)
            return
        time.sleep(min(MAX_DELAY_S, max(0.0, seconds)))

    def release(self, name: str) -> None:
        """Let the answers held under `name` go (now, and any asked later)."""
        self._event(name).set()


class _OriginHandler(_QuietHandler):
    """Files as nginx with gzip_vary serves them: gzip when accepted, Vary always, 403 when
    others may not read; directories (listings, index files) and the rest as http.server does.
    A request with DELAY_HEADER is answered that many seconds after its file or listing is
    read."""

    def __init__(self, *args: Any, late: LateAnswers, **kwargs: Any) -> None:
        self.late = late  # before the base class, which handles the request
        super().__init__(*args, **kwargs)

    def _hold(self) -> None:
        delay = self.headers.get(DELAY_HEADER, "")
        if delay:
            self.late.hold(delay)

    def list_directory(self, path: str | os.PathLike[str]) -> Any:
        listing = super().list_directory(path)
        self._hold()
        return listing

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = Path(self.translate_path(self.path))
        try:
            st = path.stat()
        except OSError:
            super().do_GET()
            return
        if not stat.S_ISREG(st.st_mode):
            super().do_GET()
            return
        if not st.st_mode & stat.S_IROTH:
            self.send_error(403)
            return
        self._send_file(path, st.st_mtime)

    def _send_file(self, path: Path, mtime: float) -> None:
        """Stream the file (gzipped as it is read, without a length, as nginx does): a big
        file costs the test process a chunk of memory, not its size."""
        try:
            f = path.open("rb")
        except OSError:
            self.send_error(404)
            return
        with f:
            self._hold()
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
            self.send_header("Vary", "Accept-Encoding")
            if "gzip" not in self.headers.get("Accept-Encoding", ""):
                self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
                self.end_headers()
                shutil.copyfileobj(f, self.wfile)
                return
            self.send_header("Content-Encoding", "gzip")
            self.end_headers()  # HTTP/1.0: the end of the connection ends the body
            self.close_connection = True
            packer = zlib.compressobj(wbits=31)  # the gzip format
            while chunk := f.read(1 << 16):
                self.wfile.write(packer.compress(chunk))
            self.wfile.write(packer.flush())


class OriginServer(ThreadingHTTPServer):
    """A threaded HTTP server with a listen backlog like nginx's (511), not socketserver's 5,
    which a burst of cache fetches and purge confirms can fill: a connect dropped at a full
    backlog waits 1 s or more for its SYN to be sent again."""

    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a cache dropping a fetch a purge made moot) is
        normal here; anything else is printed with its traceback as before."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass
class Origin:
    """A web server in this process that serves `root` on a loopback port (like a target's)."""

    root: Path
    port: int = 0
    late: LateAnswers = field(default_factory=LateAnswers)
    _server: OriginServer | None = None

    def start(self) -> Origin:
        handler = functools.partial(_OriginHandler, directory=str(self.root), late=self.late)
        self._server = OriginServer(("127.0.0.1", self.port), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

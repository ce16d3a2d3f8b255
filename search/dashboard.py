"""A live dashboard of a search, to keep open beside it: one page that polls a JSON document.

    vitprune dashboard runs/vitprune-search --port 8050     # then open http://localhost:8050

Routes (nothing else answers: no file of the run directory, no listing):

====================  ======================================================================
``/``                 the page (``static/index.html``; ``/dashboard.html`` too)
``/analyses``         the second page: Ax's own analyses (``static/analyses.html``)
``/api/state``        phase, progress, budget, dense model, every trial, best, front (JSON)
``/api/trial/N``      trial N's structure per layer, metrics and point (JSON)
``/api/analyses``     Ax's analysis cards, computed on demand in the background (JSON)
``/static/NAME``      the pages' JS and CSS, and plotly.js from the installed ``plotly``
====================  ======================================================================

The data comes from the run directory alone (:mod:`vitprune.search.dashboard_data`), so the page
works from the moment the directory exists, and the dashboard runs beside the search (or after
it) without touching it. Restoring the Ax snapshot takes a second or two: it happens in a
background thread whenever ``experiment.json`` changes. Ax's analyses take longer (they fit
models): they are computed in the background when the second page asks for them, and kept until
the snapshot changes. Requests never wait for either.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from vitprune.search.dashboard_analyses import compute_cards
from vitprune.search.dashboard_data import Snapshot, decode_point, load_snapshot, state_document, trial_detail
from vitprune.search.rundir import RunDir
from vitprune.spaces import InputError, Policy
from vitprune.spaces.errors import one_line

log = logging.getLogger("vitprune.search")
T = TypeVar("T")

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/dashboard.html": "index.html", "/analyses": "analyses.html"}
ASSETS = {"dashboard.js", "dashboard.css", "analyses.js"}
TRIAL = re.compile(r"/api/trial/(\d{1,6})")


class Watched(Generic[T]):
    """A value computed from a file in a background thread, again whenever the file changes.

    :meth:`get` never waits: it returns the latest value (or ``None``), whether a computation is
    under way, and the last error as one line. A failure is logged once per version of the file,
    and tried again after ``RETRY_S``.
    """

    RETRY_S = 30.0

    def __init__(self, path: Path, compute: Callable[[], T], *, what: str) -> None:
        self.path, self.compute, self.what = path, compute, what
        self._lock = threading.Lock()
        self._value: T | None = None
        self._key: tuple[int, int] | None = None  # (mtime, size) the value was computed from
        self._error: str | None = None
        self._failed_at = 0.0
        self._thread: threading.Thread | None = None

    def get(self, *, refresh: bool = True) -> tuple[T | None, bool, str | None]:
        """``(value, computing, error)``; with ``refresh``, start computing if the file changed."""
        try:
            stat = self.path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        with self._lock:
            if key is None:
                self._value, self._key, self._error = None, None, None
            elif refresh and self._thread is None and (key != self._key or self._retry_due()):
                self._thread = threading.Thread(target=self._run, args=(key,), daemon=True)
                self._thread.start()
            return self._value, self._thread is not None, self._error

    def wait(self, timeout: float | None = None) -> T | None:
        """Wait for the computation under way, if any (for tests and the first request)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._value

    def _retry_due(self) -> bool:
        return self._error is not None and time.monotonic() - self._failed_at > self.RETRY_S

    def _run(self, key: tuple[int, int]) -> None:
        try:
            import_ax()
            value, error = self.compute(), None
        except Exception as problem:
            value, error = None, f"{type(problem).__name__}: {one_line(problem)}"
            if key != self._key:
                log.warning("dashboard: could not read the %s (%s)", self.what, error)
        with self._lock:
            if error is None:
                self._value = value
            else:
                self._failed_at = time.monotonic()
            self._key, self._error, self._thread = key, error, None


class Dashboard:
    """What the request handlers share: the run and the caches derived from its Ax snapshot."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.snapshot: Watched[Snapshot] = Watched(
            run.experiment, lambda: load_snapshot(run), what="Ax snapshot"
        )
        self.analyses: Watched[dict[str, Any]] = Watched(
            run.experiment, lambda: compute_cards(run), what="Ax analyses"
        )
        self._decoded: dict[tuple[int, tuple[tuple[str, float], ...]], Policy | None] = {}
        self._decode_lock = threading.Lock()

    def warm(self) -> None:
        """Import Ax in the background (seconds), so that the first snapshot is read quickly."""
        threading.Thread(target=import_ax, daemon=True).start()
        self.snapshot.get()

    def state(self) -> dict[str, Any]:
        snapshot, loading, _ = self.snapshot.get()
        return state_document(self.run, snapshot, loading=loading)

    def trial(self, index: int) -> dict[str, Any] | None:
        """Trial ``index``'s detail, or ``None`` if the search has no such trial."""
        state = self.state()
        row = next((row for row in state["trials"] if row["trial"] == index), None)
        if row is None:
            return None
        snapshot, _, _ = self.snapshot.get(refresh=False)
        record = None
        if snapshot is not None:
            record = next((r for r in snapshot.records if r.index == index), None)
        decoded = None
        if row["status"] == "RUNNING" and record is not None and record.parameters:
            decoded = self._decode(index, record.parameters)
        return trial_detail(self.run, index, record=record, status=row["status"], decoded=decoded)

    def analyses_document(self) -> dict[str, Any]:
        if not self.run.experiment.exists():
            return {"status": "none"}
        value, computing, error = self.analyses.get()
        if value is None:
            return {"status": "error", "error": error} if error and not computing else {"status": "computing"}
        return {"status": "computing" if computing else "ready", **value}

    def _decode(self, index: int, point: dict[str, float]) -> Policy | None:
        """A running trial's policy, decoded from its point like the trial does (cached)."""
        key = (index, tuple(sorted(point.items())))
        with self._decode_lock:
            if key not in self._decoded:
                try:
                    self._decoded[key] = decode_point(self.run, point)
                except Exception as error:
                    log.info("dashboard: cannot decode trial %d (%s)", index, one_line(error))
                    self._decoded[key] = None
            return self._decoded[key]


_AX_IMPORT = threading.Lock()


def import_ax() -> None:
    """Import Ax (and vitprune's optimizer) once, from one thread at a time: two threads that
    import Ax at once break its circular imports (``partially initialized module``).

    Ax's own log lines are then noise on the dashboard's console: failed analyses get one line
    each instead (see ``dashboard_analyses``). That takes a filter on Ax's stderr handler, because
    one of Ax's analyses (the early-stopping health check replays the experiment with an
    ``Orchestrator``) resets the level of every Ax logger and of that handler.
    """
    with _AX_IMPORT:
        from vitprune.search.noise import quiet_third_party

        quiet_third_party()
        from ax.utils.common.logger import ROOT_STREAM_HANDLER

        import vitprune.search.optimizer  # noqa: F401

        if not any(isinstance(f, _OnlyCritical) for f in ROOT_STREAM_HANDLER.filters):
            ROOT_STREAM_HANDLER.addFilter(_OnlyCritical())


class _OnlyCritical(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


class _Asset:
    """A static file's bytes, its gzip and its ETag, read once."""

    def __init__(self, body: bytes, content_type: str, cache: str) -> None:
        self.body, self.content_type, self.cache = body, content_type, cache
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self._gzip: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzip is None:
            self._gzip = gzip.compress(self.body, compresslevel=6)
        return self._gzip


def _assets() -> dict[str, _Asset]:
    """Every static route: the pages, their JS and CSS, and plotly.js (served once, cached long)."""
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assets = {}
    for route, name in PAGES.items():
        page = (STATIC / name).read_text().replace("{plotly_version}", plotly.__version__)
        assets[route] = _Asset(page.encode(), "text/html; charset=utf-8", "no-cache")
    for name in ASSETS:
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assets[f"/static/{name}"] = _Asset((STATIC / name).read_bytes(), f"{kind}; charset=utf-8", "no-cache")
    assets["/static/plotly.min.js"] = _Asset(
        plotly_js.read_bytes(), "text/javascript; charset=utf-8", "public, max-age=31536000, immutable"
    )
    return assets


def state(run: RunDir) -> dict[str, Any]:
    """The ``/api/state`` document of ``run`` now, reading the Ax snapshot in this thread (a
    second or two): what ``vitprune dashboard RUN --once`` prints."""
    snapshot = None
    if run.experiment.exists():
        import_ax()
        snapshot = load_snapshot(run)
    return state_document(run, snapshot)


def serve(run: RunDir, *, host: str = "127.0.0.1", port: int) -> None:
    """Serve the dashboard of ``run`` on ``host:port`` until interrupted (see :func:`make_server`)."""
    server = make_server(run, host=host, port=port)
    with server:
        shown = "localhost" if _is_loopback(host) else host
        log.info("dashboard: http://%s:%d/ (Ctrl-C to stop)", shown, server.server_address[1])
        server.serve_forever()


def make_server(run: RunDir, *, host: str = "127.0.0.1", port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the dashboard of ``run`` (not yet serving; ``port=0`` picks a free port).

    Only the dashboard's own routes answer (see the module docstring); nothing of the run
    directory (weights, database, logs) is served, and there is no directory listing. The default
    host is the loopback interface: another host serves the page to the network, with a warning.

    Raises:
        InputError: the host is not an address of this machine, or the port is taken.
    """
    dashboard = Dashboard(run)
    assets = _assets()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            try:
                if path in assets:
                    self._send_asset(assets[path])
                elif path == "/api/state":
                    self._send_json(dashboard.state())
                elif path == "/api/analyses":
                    self._send_json(dashboard.analyses_document())
                elif (match := TRIAL.fullmatch(path)) and (detail := dashboard.trial(int(match[1]))):
                    self._send_json(detail)
                else:
                    self.send_error(404, "Not found")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away

        def _send_json(self, document: dict[str, Any]) -> None:
            body = json.dumps(document, separators=(",", ":")).encode()
            self._send_asset(_Asset(body, "application/json", "no-cache"))

        def _send_asset(self, asset: _Asset) -> None:
            if self.headers.get("If-None-Match") == asset.etag:
                self.send_response(304)
                self.send_header("ETag", asset.etag)
                self.end_headers()
                return
            body = asset.body
            zipped = "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 2048
            if zipped:
                body = asset.gzipped()
            self.send_response(200)
            self.send_header("Content-Type", asset.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", asset.cache)
            self.send_header("ETag", asset.etag)
            if zipped:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # requests go to the debug log only
            log.debug("dashboard: " + format, *args)

    loopback = _is_loopback(host)
    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        reason = "already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        raise InputError(f"--port {port}: cannot listen on {host}:{port} ({reason})") from None
    server.daemon_threads = True
    server.dashboard = dashboard  # type: ignore[attr-defined]
    dashboard.warm()
    if not loopback:
        log.warning("dashboard: listening on %s: anyone who can reach this machine sees the page", host)
    return server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        raise InputError(f"--host {host}: not an address of this machine") from None

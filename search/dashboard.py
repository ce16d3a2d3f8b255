"""A live dashboard of a search: Ax's analysis cards rendered to one self-refreshing HTML page.

Ax has no web server of its own; its cards render to self-contained HTML (plotly + tables). The
dashboard rebuilds ``dashboard.html`` from ``experiment.json`` whenever the snapshot changes (it
is rewritten after every completed trial) and serves the run directory with the standard
library's HTTP server (its own page only, on this machine only unless ``--host`` says otherwise),
so it runs beside the search without slowing it.

    vitprune dashboard runs/vitprune-search --port 8050     # then open http://localhost:8050
"""

from __future__ import annotations

import errno
import html
import http.server
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from vitprune.search.rundir import RunDir
from vitprune.spaces import InputError
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">
<title>vitprune · {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}}
.card{{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}}
h1{{font-size:1.4rem}} .meta{{color:#666}}</style></head>
<body><h1>vitprune search · {name}</h1>
<p class="meta">{summary} · updated {updated} · refreshes every {refresh} s</p>
{cards}
</body></html>
"""


def _flatten(cards: list[Any]) -> list[Any]:
    """Ax nests cards in groups; the page shows the leaves in order."""
    leaves = []
    for card in cards:
        children = getattr(card, "children", None)
        leaves += _flatten(list(children)) if children else [card]
    return leaves


def render(run: RunDir, *, refresh: int = 10) -> Path:
    """Write ``dashboard.html`` from the Ax snapshot ``experiment.json``."""
    from vitprune.search.optimizer import Optimizer
    from vitprune.search.records import NoFeasibleTrialError

    optimizer = Optimizer.restore(run.experiment)
    records = optimizer.trials()
    done = sum(r.status == "COMPLETED" for r in records)
    failed = sum(r.status in ("FAILED", "ABANDONED") for r in records)
    summary = f"{len(records)} trials: {done} completed, {failed} failed or abandoned"
    if optimizer.multi_objective:
        try:
            front = ", ".join(str(point.index) for point in optimizer.pareto_frontier())
        except NoFeasibleTrialError:
            front = "none yet"
        summary += f" · Pareto front (accuracy, -latency_ms): trials {front}"
    sections = []
    for card in _flatten(optimizer.analysis_cards()):
        title = html.escape(str(getattr(card, "title", "")))
        subtitle = html.escape(str(getattr(card, "subtitle", "")))
        try:
            body = card._repr_html_()
        except Exception as error:
            body = f"<pre>{html.escape(repr(error))}</pre>"
        sections.append(f'<div class="card"><h2>{title}</h2><p class="meta">{subtitle}</p>{body}</div>')
    page = PAGE.format(
        name=html.escape(run.root.name),
        summary=html.escape(summary),
        updated=time.strftime("%H:%M:%S"),
        refresh=refresh,
        cards="\n".join(sections) or "<p>No trials yet.</p>",
    )
    return write_text_atomic(run.root / "dashboard.html", page)


def serve(run: RunDir, *, host: str = "127.0.0.1", port: int, refresh: int = 10) -> None:
    """Serve the dashboard on ``host:port`` until interrupted (see :func:`make_server`),
    re-rendering it whenever ``experiment.json`` changes."""

    def watch() -> None:
        seen = None
        while True:
            stamp = run.experiment.stat().st_mtime if run.experiment.exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    render(run, refresh=refresh)
                except Exception as error:
                    log.warning("dashboard: could not render (%s)", error)
            time.sleep(2)

    server = make_server(run, host=host, port=port)
    threading.Thread(target=watch, daemon=True).start()
    with server:
        shown = "localhost" if _is_loopback(host) else host
        log.info("dashboard: http://%s:%d/ (Ctrl-C to stop)", shown, server.server_address[1])
        server.serve_forever()


def make_server(run: RunDir, *, host: str = "127.0.0.1", port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the dashboard of ``run`` (not yet serving).

    Only the dashboard's own routes answer (``/`` and ``/dashboard.html``); nothing else of the run
    directory (weights, database, logs) is served, and there is no directory listing. The default
    host is the loopback interface: another host serves the page to the network, with a warning.

    Raises:
        InputError: the host is not an address of this machine, or the port is taken.
    """
    page = run.root / "dashboard.html"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/dashboard.html"):
                self.send_error(404, "Not found")
                return
            body = page.read_bytes() if page.exists() else WAITING.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
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
    if not loopback:
        log.warning("dashboard: listening on %s: anyone who can reach this machine sees the page", host)
    return server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        raise InputError(f"--host {host}: not an address of this machine") from None


WAITING = (
    '<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="5">'
    "<title>vitprune</title><p>The search has no finished trial yet; this page refreshes itself.</p>"
)

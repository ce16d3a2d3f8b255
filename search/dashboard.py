"""A live dashboard of a search: Ax's analysis cards rendered to one self-refreshing HTML page.

Ax has no web server of its own; its cards render to self-contained HTML (plotly + tables). The
dashboard rebuilds ``dashboard.html`` from ``experiment.json`` whenever the snapshot changes (it
is rewritten after every completed trial) and serves the run directory with the standard
library's HTTP server, so it runs beside the search without slowing it.

    vitprune dashboard runs/vitprune-search --port 8050     # then open http://localhost:8050
"""

from __future__ import annotations

import functools
import html
import http.server
import logging
import threading
import time
from pathlib import Path
from typing import Any

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


def render(run_dir: Path, *, refresh: int = 10) -> Path:
    """Write ``run_dir/dashboard.html`` from the Ax snapshot ``experiment.json``."""
    from vitprune.search.optimizer import Optimizer

    optimizer = Optimizer.restore(run_dir / "experiment.json")
    records = optimizer.trials()
    done = sum(r.status == "COMPLETED" for r in records)
    failed = sum(r.status in ("FAILED", "ABANDONED") for r in records)
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
        name=html.escape(run_dir.name),
        summary=f"{len(records)} trials: {done} completed, {failed} failed or abandoned",
        updated=time.strftime("%H:%M:%S"),
        refresh=refresh,
        cards="\n".join(sections) or "<p>No trials yet.</p>",
    )
    return write_text_atomic(run_dir / "dashboard.html", page)


def serve(run_dir: Path, *, port: int, refresh: int = 10) -> None:
    """Serve the dashboard on ``port``, re-rendering it when ``experiment.json`` changes."""
    snapshot = run_dir / "experiment.json"

    def watch() -> None:
        seen = None
        while True:
            stamp = snapshot.stat().st_mtime if snapshot.exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    render(run_dir, refresh=refresh)
                except Exception as error:
                    log.warning("dashboard: could not render (%s)", error)
            time.sleep(2)

    threading.Thread(target=watch, daemon=True).start()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(run_dir))
    with http.server.ThreadingHTTPServer(("", port), handler) as server:
        log.info("dashboard: http://localhost:%d/dashboard.html (Ctrl-C to stop)", port)
        server.serve_forever()

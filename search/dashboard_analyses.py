"""Ax's own analyses of a search (sensitivity, cross-validation, arm effects, …) as JSON for the
dashboard's second page.

``Client.compute_analyses()`` chooses the analyses for the experiment's state and returns cards:
plotly figures, tables, markdown and health checks. Each card becomes one JSON entry the page
renders with its one copy of plotly.js (a card's own HTML would inline all of plotly.js, 4.8 MB,
every time). A card that fails (Ax returns an error card, or logs a traceback for an analysis
nested in its overview; the generation strategy graph needs graphviz's ``dot``) is left out with
one logged line, never shown raw; analyses that need more trials are listed as not available yet.
"""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Any

from vitprune.search.rundir import RunDir

log = logging.getLogger("vitprune.search")
_logged: set[tuple[str, str]] = set()  # each failure is logged once, not at every recomputation


def compute_cards(run: RunDir) -> dict[str, Any]:
    """``/api/analyses`` once computed: ``cards`` (title, subtitle as HTML, and a plotly
    ``figure``, an HTML ``table`` or a health check ``status``), ``unavailable`` (title, why) and
    ``left_out`` (title, one-line reason). Takes seconds to minutes: call it in the background."""
    from ax.core.analysis_card import ErrorAnalysisCard, NotApplicableStateAnalysisCard

    from vitprune.search.optimizer import Optimizer

    started = time.perf_counter()
    optimizer = Optimizer.restore(run.experiment)
    with _AxFailures() as failures:
        leaves = [leaf for card in optimizer.analysis_cards() for leaf in card.flatten()]
    cards, unavailable, left_out = [], [], []
    for entry in failures.lines:  # Ax may run one analysis several times (per metric)
        if entry not in left_out:
            left_out.append(entry)
    for card in leaves:
        if isinstance(card, NotApplicableStateAnalysisCard):
            unavailable.append({"title": card.name, "why": _one_line(card.blob)})
            continue
        if isinstance(card, ErrorAnalysisCard):
            if all(entry["title"] != card.name for entry in left_out):  # Ax logged it too
                left_out.append({"title": card.name, "reason": _one_line(card.subtitle)})
            continue
        try:
            cards.append(card_document(card))
        except Exception as error:  # a card that cannot render (graphviz without `dot`) is left out
            left_out.append({"title": card.title, "reason": f"{type(error).__name__}: {_one_line(error)}"})
    for entry in left_out:
        if (entry["title"], entry["reason"]) not in _logged:
            _logged.add((entry["title"], entry["reason"]))
            log.info("dashboard: Ax analysis %s left out (%s)", entry["title"], entry["reason"])
    return {
        "cards": cards,
        "unavailable": unavailable,
        "left_out": left_out,
        "trials": optimizer.num_trials,
        "seconds": round(time.perf_counter() - started, 1),
        "computed": time.time(),
    }


def card_document(card: Any) -> dict[str, Any]:
    """One Ax card as JSON: its title, its subtitle rendered from markdown, and its body."""
    from ax.analysis.graphviz.graphviz_analysis import GraphvizAnalysisCard
    from ax.analysis.healthcheck.healthcheck_analysis import HealthcheckAnalysisCard
    from ax.analysis.markdown.markdown_analysis import MarkdownAnalysisCard
    from ax.analysis.plotly.plotly_analysis import PlotlyAnalysisCard

    document: dict[str, Any] = {"name": card.name, "title": card.title, "subtitle": markdown(card.subtitle)}
    if isinstance(card, PlotlyAnalysisCard):
        figure = json.loads(card.blob)
        layout = figure.setdefault("layout", {})
        for fixed in ("width", "height"):
            layout.pop(fixed, None)  # the page sizes figures to their card
        document["figure"] = figure
    elif isinstance(card, HealthcheckAnalysisCard):
        document["status"] = card.get_status().name.lower()
    elif isinstance(card, MarkdownAnalysisCard):
        document["html"] = markdown(card.get_markdown())
    elif isinstance(card, GraphvizAnalysisCard):
        document["html"] = card.get_digraph().pipe(format="svg").decode()  # raises without `dot`
    else:  # a table
        document["html"] = card.df.to_html(
            index=False, border=0, classes="table", na_rep="", float_format=lambda v: f"{v:.4g}"
        )
    return document


def markdown(text: str) -> str:
    """Ax writes subtitles in markdown (``**Metric**``, backticks): HTML, with raw HTML escaped."""
    import markdown as markdown_module  # an Ax dependency

    return markdown_module.markdown(html.escape(str(text or ""), quote=False))


def _one_line(text: Any) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


class _AxFailures(logging.Filter):
    """While computing, Ax's analyses log each failure as two ERROR records, ``Failed to compute
    X`` and a traceback: drop both from stderr and keep ``X`` with the traceback's last line."""

    LOGGER = "ax.analysis.analysis"

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, str]] = []
        self._pending: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to compute "):
            self._pending = message.removeprefix("Failed to compute ").strip()
            return False
        if message.startswith("Traceback"):
            tail = [line for line in message.strip().splitlines() if line.strip()]
            reason = tail[-1].strip() if tail else "failed"
            self.lines.append({"title": self._pending or "analysis", "reason": reason[:300]})
            self._pending = None
            return False
        return True

    def __enter__(self) -> _AxFailures:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)

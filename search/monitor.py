"""Where a search says what it is doing: ``phase.json`` in the run directory (the dashboard reads
it), progress bars on a terminal (rich), and the log.

The phases, in order: ``dense training``, ``criteria``, ``latency model`` (latency budgets only),
``trials``, then ``finished`` (or ``failed`` / ``interrupted``). Within a phase, :meth:`Monitor.advance`
reports steps done out of a total, written at most once a second.

``phase.json``::

    {"phase": "dense training", "started": 1764321600.0, "updated": 1764321612.5,
     "done": 12, "total": 80, "unit": "epochs",
     "history": [{"phase": "dense training", "started": ..., "ended": null}]}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from vitprune.search.rundir import RunDir
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")

LOG_EVERY_S = 5.0
PHASES = (
    "dense training",
    "criteria",
    "latency model",
    "trials",
    "selection",
    "finished",
    "failed",
    "interrupted",
)


class Monitor:
    """Reports the phase of one search.

    Args:
        run: the run directory whose ``phase.json`` to write (``None``: nothing is written).
        bars: show rich progress bars on the console (a terminal); otherwise a log line every
            few seconds.
    """

    def __init__(self, run: RunDir | None = None, *, bars: bool = False) -> None:
        self.run = run
        self.bars = None
        if bars:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
        self.state: dict[str, Any] = {"phase": None, "history": []}
        self._task: Any = None
        self._written = 0.0
        self._logged = 0.0

    def phase(self, name: str, *, total: int | None = None, unit: str = "") -> None:
        """Enter phase ``name`` (one of ``PHASES``), with ``total`` steps of ``unit`` if known."""
        if name not in PHASES:
            raise ValueError(f"phase: {name!r} is not one of {', '.join(PHASES)}")
        now = time.time()
        for entry in self.state["history"]:
            entry["ended"] = entry["ended"] or now
        self.state |= {"phase": name, "started": now, "done": 0, "total": total, "unit": unit}
        self.state["history"].append({"phase": name, "started": now, "ended": None})
        self._stop_bar()
        self._logged = time.time()
        if self.bars is not None and total:
            self.bars.start()
            self._task = self.bars.add_task(name, total=total, unit=unit)
        self._write(force=True)

    def advance(self, done: int, total: int | None = None) -> None:
        """``done`` steps of the current phase are done (of ``total``, if it changed)."""
        self.state["done"] = done
        if total is not None:
            self.state["total"] = total
        if self._task is not None:
            self.bars.update(self._task, completed=done, total=self.state["total"])
        elif time.time() - self._logged >= LOG_EVERY_S:  # no terminal: a line every few seconds
            self._logged = time.time()
            total = self.state["total"]
            log.info(
                "%s: %d%s %s", self.state["phase"], done, f"/{total}" if total else "", self.state["unit"]
            )
        self._write()

    def close(self, outcome: str = "finished") -> None:
        """End the search's last phase: ``finished``, ``failed`` or ``interrupted``."""
        self.phase(outcome)
        self._stop_bar()

    def _stop_bar(self) -> None:
        if self._task is not None:
            self.bars.stop()
            self._task = None

    def _write(self, *, force: bool = False) -> None:
        now = time.time()
        if self.run is None or not self.run.root.exists() or (not force and now - self._written < 1.0):
            return
        self._written = now
        try:
            write_text_atomic(self.run.phase, json.dumps(self.state | {"updated": now}))
        except OSError as problem:  # never stop a search for its progress display
            log.debug("phase.json: %s", problem)

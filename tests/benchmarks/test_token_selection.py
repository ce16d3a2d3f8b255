"""benchmarks/token_selection.py --quick: every model is timed at every batch size, and the static
slice has the MACs of the token selection it replaces (only the selection differs)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_quick_run_times_selection_floor_and_widths_at_each_budget_and_batch(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import token_selection

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert token_selection.main(["--quick", "--threads", "1"]) == 0
    rows = [
        line.split(" | ")
        for line in out.getvalue().splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    rows = [row for row in rows if row[0] != "| batch"]
    assert len(rows) == 2 * (1 + 2 * 3)  # batch 1 and 2: dense, then 3 models per budget
    by_name = {(row[0], row[1]): float(row[2]) for row in rows}
    for batch in ("| 1", "| 2"):
        for budget in ("50%", "25%"):
            selection = next(
                v for (b, n), v in by_name.items() if b == batch and n.startswith(budget) and "selection" in n
            )
            floor = next(
                v for (b, n), v in by_name.items() if b == batch and n.startswith(budget) and "floor" in n
            )
            assert selection == floor <= float(budget[:-1]) / 100

"""Tables of a run: ``trials.csv`` (written after the search and by ``vitprune status``), and the
console table of ``vitprune status``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from vitprune.search.records import TrialRecord
from vitprune.search.rundir import RunDir
from vitprune.spaces import Policy, macs, params
from vitprune.spaces.files import write_text_atomic

METRICS = ("accuracy", "macs", "params", "latency_ms")
FROM_TRIAL = (
    "accuracy_sem",
    "zero_shot_accuracy",
    "top5",
    "finetune_seconds",
    "finetune_epochs",
    "latency_seconds",
    "budget_ratio",
    "budget_scale",
    "budget_shortfall",
)


def trial_rows(run: RunDir, records: Sequence[TrialRecord], *, dense: Policy) -> list[dict[str, Any]]:
    """One row per Ax trial: status, generation node, parameters, decoded structure, metrics, times."""
    rows = []
    for record in records:
        saved = run.trial_metrics(record.index) or {}
        row: dict[str, Any] = {"trial": record.index, "status": record.status, "node": record.node}
        # the point's parameters, prefixed: `heads` (a ratio) is not the structure's `heads` (a count)
        row |= {f"point_{name}": round(value, 6) for name, value in sorted(record.parameters.items())}
        row |= {
            key.removeprefix("structure_"): value
            for key, value in saved.items()
            if key.startswith("structure_")
        }
        for name in METRICS:
            row[name] = record.metrics.get(name, saved.get(name))
        if row["macs"] is not None:
            row["macs_ratio"] = round(row["macs"] / macs(dense), 4)
        if row["params"] is not None:
            row["params_ratio"] = round(row["params"] / params(dense), 4)
        row |= {name: saved.get(name) for name in FROM_TRIAL}
        row |= {
            "suggest_fit_s": round(record.fit_s, 3),
            "suggest_gen_s": round(record.gen_s, 3),
            "reason": run.trial_error(record.index) or record.reason,
        }
        rows.append(row)
    return rows


def write_trials_csv(run: RunDir, records: Sequence[TrialRecord], *, dense: Policy) -> list[dict[str, Any]]:
    """Write ``trials.csv`` (see :func:`trial_rows`); returns its rows."""
    rows = trial_rows(run, records, dense=dense)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run.trials_csv, buffer.getvalue())
    return rows

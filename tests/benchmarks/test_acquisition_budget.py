"""benchmarks/acquisition_budget.py: replaying a search's trials with two acquisition budgets."""

from __future__ import annotations

import csv
import math

import pytest


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import acquisition_budget

    return acquisition_budget


def _trials_csv(path, *, completed: int, failed_at: int | None = None):
    """A search's trials.csv: points in [0, 1]^3, accuracy peaked at (0.7, 0.2, 0.5)."""
    rows = []
    for i in range(completed + (failed_at is not None)):
        failed = i == failed_at
        point = [((i * 7 + 3 * d) % 11) / 10 for d in range(3)]
        accuracy = 0.9 - sum((p - c) ** 2 for p, c in zip(point, (0.7, 0.2, 0.5), strict=True)) / 3
        rows.append(
            {"trial": i, "status": "FAILED" if failed else "COMPLETED"}
            | {f"point_d{d}": "" if failed else point[d] for d in range(3)}
            | {"accuracy": "" if failed else accuracy, "accuracy_sem": "" if failed else 0.005}
        )
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_failed_trials_are_not_observations(script, tmp_path):
    points, accuracy, sem = script.trials(_trials_csv(tmp_path / "trials.csv", completed=6, failed_at=2))
    assert points.shape == (6, 3) and accuracy.shape == (6, 1) and sem.shape == (6, 1)
    assert float(points.min()) >= 0 and float(points.max()) <= 1


def test_every_second_trial_is_replayed_with_both_budgets(script, tmp_path):
    rows = script.replay(_trials_csv(tmp_path / "trials.csv", completed=9), first=4, repeats=1)
    assert [row["observed"] for row in rows] == [4, 6, 8]
    for row in rows:
        assert all(math.isfinite(row[name]) for name in script.BUDGETS)


def test_a_missing_file_is_one_line_and_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.csv" in err[0]


def test_too_few_trials_is_one_line_and_status_2(script, tmp_path, capsys):
    path = _trials_csv(tmp_path / "trials.csv", completed=5)
    assert script.main([str(path), "--first", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 completed trials" in err[0]

"""benchmarks/gp_noise.py: both noise models are scored on every run, and bad input is one line and
exit status 2 before any GP is fitted."""

from __future__ import annotations

import csv
import random

import pytest


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import gp_noise

    return gp_noise


def _run(directory, *, trials=8, sem=True):
    """A run directory whose trials.csv has points in [0, 1]^2 and accuracies around 0.8."""
    directory.mkdir()
    rng = random.Random(0)
    with (directory / "trials.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["trial", "point_a", "point_b", "accuracy", "accuracy_sem"])
        writer.writeheader()
        for index in range(trials):
            a, b = rng.random(), rng.random()
            accuracy = 0.8 - 0.05 * (a - 0.5) ** 2 + rng.gauss(0, 0.005)
            writer.writerow(
                {
                    "trial": index,
                    "point_a": a,
                    "point_b": b,
                    "accuracy": accuracy,
                    "accuracy_sem": 0.007 if sem else "",
                }
            )
        writer.writerow({"trial": trials, "point_a": 0.5, "point_b": 0.5, "accuracy": ""})  # failed: skipped
    return directory


def test_each_run_gets_both_noise_models_and_their_means(script, tmp_path, capsys):
    runs = [_run(tmp_path / "one"), _run(tmp_path / "two", sem=False)]
    assert script.main([str(r) for r in runs[:1]]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| one")]
    assert [row.split(" | ")[2] for row in rows] == ["inferred", "binomial"]
    assert rows[1].split(" | ")[3] == "0.0070"  # the saved standard error is the binomial noise
    assert script.main([str(r) for r in runs] + ["--images", "3000"]) == 0
    out = capsys.readouterr().out
    (two,) = [line for line in out.splitlines() if line.startswith("| two | 8 | binomial")]
    assert float(two.split(" | ")[3]) == pytest.approx((0.8 * 0.2 / 3000) ** 0.5, abs=2e-4)  # from --images
    assert out.count("| mean of 2 runs |") == 2


def test_bad_input_is_one_line_and_exit_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing")]) == 2
    assert "missing/trials.csv" in capsys.readouterr().err
    run = _run(tmp_path / "old", sem=False)
    assert script.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "saved no accuracy_sem; give --images" in err and len(err.strip().splitlines()) == 1

"""benchmarks/latency_model.py: one row per model, the held-out error of the whole-model factor
fitted four ways on one measurement, and the dense model's prediction over its measurement."""

from __future__ import annotations

import contextlib
import io
import re


def test_a_row_per_model_with_four_fits_and_the_dense_prediction(benchmarks_on_path):
    import latency_model

    out = io.StringIO()
    argv = ["--models", "vitprune_digits_vit", "--holdout", "2", "--repeats", "1", "--batch-size", "4"]
    with contextlib.redirect_stdout(out):
        assert latency_model.main(argv) == 0
    (row,) = [line for line in out.getvalue().splitlines() if line.startswith("| vitprune_digits_vit")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:2] == ["vitprune_digits_vit", "2"] and len(cells) == 9
    for cell in cells[2:6]:  # mean (max) error of each fit
        mean, worst = map(float, re.fullmatch(r"([\d.]+)% \((\d+)%\)", cell).groups())
        assert 0 <= mean <= worst + 0.5
    assert all(float(ratio) > 0 for ratio in cells[6].split(", ")) and cells[7].endswith("%")

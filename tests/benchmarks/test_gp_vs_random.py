"""benchmarks/gp_vs_random.py: its tables pair the searches seed by seed against the one uniform
policy, and a resumed comparison keeps what was measured (the searches themselves are the
benchmark, minutes each: not run here)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import gp_vs_random

    return gp_vs_random


def _row(method, seed, test, search_val=None):
    row = {"method": method, "seed": seed, "macs_ratio": 0.25, "recipe_test": {"mean": test, "sd": 0.0}}
    if search_val is not None:
        row |= {"search_val": search_val, "best_trial": 3, "trial_test": test}
        row |= {"wall_s": 90.0, "suggest_s": 9.0}
    return row


REPORT = {
    "command": "python benchmarks/gp_vs_random.py",
    "date": "2026-11-28",
    "trials": 24,
    "budget": "25%",
    "search_val_images": 432,
    "test_images": 360,
    "dense_test": 0.98,
    "rows": [
        _row("gp_ei", 0, 0.975, 0.98),
        _row("random", 0, 0.970, 0.97),
        _row("uniform", 0, 0.972),
        _row("gp_ei", 1, 0.968, 0.97),
        _row("random", 1, 0.968, 0.96),
        _row("uniform", 1, 0.972),
    ],
}


def test_the_tables_pair_each_seed_with_random_and_with_the_uniform_policy(script):
    text = script.tables(REPORT)
    random = "GP-EI − random, policy's test, per seed: +0.0050, +0.0000 (GP-EI ahead in 1, tied in 1 of 2)"
    uniform = "GP-EI − uniform, policy's test, per seed: +0.0030, -0.0040 (GP-EI ahead in 1, tied in 0 of 2)"
    assert random in text and uniform in text
    summary = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "0.9715 ± 0.0049" in summary["| gp_ei"]  # the mean ± sd over the two seeds
    assert summary["| uniform"].endswith("| 0.9720 ± 0.0000 | 2 |")  # one policy, counted once


def test_resume_needs_a_report_to_resume(script, tmp_path, capsys):
    assert script.main(["--resume", "--out", str(tmp_path / "missing.json")]) == 2
    assert "--resume needs an existing --out report" in capsys.readouterr().err


def test_the_tables_say_when_the_selection_chose_another_trial_than_axs_best(script):
    selected = {"finalists": [{"trial": 3}, {"trial": 7}]}
    moved = _row("gp_ei", 0, 0.975, 0.98) | {
        "selection": selected,
        "without_selection": {"trial": 3, "recipe_test": {"mean": 0.970, "sd": 0.0}},
    }
    kept = _row("gp_ei", 1, 0.968, 0.97) | {"selection": selected}
    text = script.tables(REPORT | {"rows": [moved, kept, _row("random", 0, 0.970, 0.97)]})
    assert "- gp_ei: the selection chose another trial than Ax's best in 1 of 2 searches" in text
    assert "chosen − Ax's best: +0.0050" in text
    assert "- random: the selection" not in text  # no selection recorded: nothing said


def test_a_negative_test_seed_is_one_line_and_exit_status_2(script, capsys):
    with pytest.raises(SystemExit) as stopped:
        script.main(["--test-seed", "-1"])
    assert stopped.value.code == 2
    assert "argument --test-seed: must be >= 0, got -1" in capsys.readouterr().err


def test_the_test_seed_reaches_the_data_section(script):
    spec = script.configured(script.parse_args(["--test-seed", "2", "--search-val-fraction", "0.2"]))
    assert spec.data.test_seed == 2 and spec.data.search_val_fraction == 0.2

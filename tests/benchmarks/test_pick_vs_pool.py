"""benchmarks/pick_vs_pool.py: what a search picked against the pool it picked from (the refits it
reads are the benchmark, minutes per search: a made-up search stands in for them here)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import pick_vs_pool

    return pick_vs_pool


def _search(worth, scores, nodes=None):
    n = len(worth)
    return {
        "name": "gp_ei-0",
        "method": "gp_ei",
        "picked": max(range(n), key=lambda i: scores[i]),
        "trials": list(range(n)),
        "points": [[i / n, (i * 7 % n) / n] for i in range(n)],
        "scores": scores,
        "nodes": nodes or ["Sobol"] * n,
        "worth": worth,
        "search_val_images": 432,
    }


def test_the_pick_is_set_against_the_best_and_the_top_five_of_its_pool(script):
    worth = [0.95, 0.96, 0.97, 0.98, 0.99, 0.94, 0.93, 0.975]
    scores = [0.95, 0.96, 0.97, 0.96, 0.95, 0.94, 0.93, 0.99]  # trial 7 scored best, worth 0.975
    row = script.analyse(_search(worth, scores, nodes=["start"] + ["Sobol"] * 3 + ["GP"] * 4))
    assert row["picked"] == 7 and row["pick"] == 0.975
    assert row["oracle"] == 0.99
    assert row["top"] == pytest.approx((0.99 + 0.98 + 0.975 + 0.97 + 0.96) / 5)
    assert row["gp_trials"] == pytest.approx((0.99 + 0.94 + 0.93 + 0.975) / 4)
    assert -1 <= row["rho"] <= 1
    for rule in row["rules"].values():  # each rule names a trial of the pool and its worth
        assert worth[rule["trial"]] == rule["worth"]
    assert row["rules"]["search-val"]["trial"] == 7


def test_a_search_whose_scores_rank_its_pool_exactly_has_rho_one(script):
    worth = [0.90 + 0.01 * i for i in range(6)]
    row = script.analyse(_search(worth, scores=[w - 0.02 for w in worth]))
    assert row["rho"] == pytest.approx(1.0)
    assert row["pick"] == row["oracle"] == pytest.approx(0.95)
    assert row["gp_trials"] is None
    lines = script.table([row])
    assert lines[2].startswith("| gp_ei-0 | 5 | 0.9500 | 0.9500 |")
    assert lines[-1].startswith("| gp_ei | 1 | 0.9500 | 0.9500 |")


def test_bad_input_is_one_line_and_exit_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "vitprune.peers/1"}))
    assert script.main([str(other)]) == 2
    err = capsys.readouterr().err
    assert "not a refit_trials.py report" in err and len(err.strip().splitlines()) == 1

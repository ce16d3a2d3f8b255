"""benchmarks/race_paired.py: paired differences between the race's contenders on the same test
images (the race it reads takes minutes per run: made-up reports stand in for it here)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import race_paired

    return race_paired


def _report(contenders: dict[str, list[str]], *, budget="50%", test_seed=0):
    """A peers.py report: per contender, one ``correct`` string per fine-tune seed."""
    entries = {
        name: {"runs": [{"test": {"correct": row, "accuracy": row.count("1") / len(row)}} for row in rows]}
        for name, rows in contenders.items()
    }
    return {"accuracy": {"test_seed": test_seed, "budgets": {budget: {"contenders": entries}}}}


def _rows_against_torch_pruning(script, contenders: dict[str, list[str]], *, resamples: int):
    """``compare``'s rows for one peers report at 50 %, against Torch-Pruning."""
    report = _report(contenders)
    return script.compare([("a", report)], budget="50%", against="torch-pruning", resamples=resamples)["rows"]


def test_the_difference_is_the_difference_of_mean_test_accuracies(script):
    tp = ["1" * 90 + "0" * 10, "1" * 85 + "0" * 15]  # 0.90 and 0.85: mean 0.875
    search = ["1" * 95 + "0" * 5, "1" * 88 + "0" * 12, "1" * 92 + "0" * 8]  # mean 0.9167
    (row,) = _rows_against_torch_pruning(script, {"torch-pruning": tp, "search": search}, resamples=2000)
    assert row["contender"] == "search" and row["images"] == 100
    assert row["difference"] == pytest.approx((0.95 + 0.88 + 0.92) / 3 - 0.875)
    assert row["low"] < row["difference"] < row["high"]
    half = (row["high"] - row["low"]) / 2
    assert row["images_to_resolve"] == pytest.approx(100 * (half / row["difference"]) ** 2)


def test_a_contender_right_wherever_the_reference_is_and_more_is_resolved_ahead(script):
    reference = ["1" * 80 + "0" * 20]
    better = ["1" * 90 + "0" * 10]  # right on the same 80 images and 10 more
    (row,) = _rows_against_torch_pruning(
        script, {"torch-pruning": reference, "search": better}, resamples=2000
    )
    assert row["difference"] == pytest.approx(0.10)
    assert row["low"] > 0 and row["p_ahead"] == 1.0 and row["verdict"] == "ahead"
    # The same accuracies on different images are not resolved: unpaired noise is far larger.
    shuffled = ["0" * 10 + "1" * 90]
    rows = _rows_against_torch_pruning(
        script, {"torch-pruning": reference, "search": shuffled}, resamples=2000
    )
    assert rows[0]["difference"] == pytest.approx(0.10)
    assert rows[0]["low"] < row["low"]


def test_identical_contenders_differ_by_nothing_and_never_resolve(script):
    runs = ["1" * 30 + "0" * 10, "1" * 25 + "0" * 15]
    (row,) = _rows_against_torch_pruning(script, {"torch-pruning": runs, "uniform-all": runs}, resamples=500)
    assert row["difference"] == 0.0 and row["images_to_resolve"] == float("inf")
    assert row["verdict"] == "not resolved"


def test_reports_pool_image_by_image_and_keep_their_own_differences(script):
    first = _report({"torch-pruning": ["1" * 50 + "0" * 50], "search": ["1" * 60 + "0" * 40]})
    second = _report(
        {"torch-pruning": ["1" * 300], "search": ["1" * 297 + "0" * 3]}, test_seed=1
    )  # 300 images: weighs three times the first
    result = script.compare(
        [("a", first), ("b", second)], budget="50%", against="torch-pruning", resamples=500
    )
    (row,) = result["rows"]
    assert row["images"] == 400 and result["test_seeds"] == [0, 1]
    assert row["per_report"] == pytest.approx([0.10, -0.01])
    assert row["difference"] == pytest.approx((10 - 3) / 400)
    assert "| search | 400 | +1.75 |" in script.markdown(result)


def test_seeds_are_resampled_apart_from_images(script):
    # Every image right at one seed and wrong at the other: resampling images alone would see no
    # spread; resampling the seeds does.
    flaky = ["1" * 50, "0" * 50]
    steady = ["1" * 25 + "0" * 25, "1" * 25 + "0" * 25]
    row = script.paired_difference(
        [
            (
                script.contenders(_report({"s": flaky}), "50%", source="a")["s"],
                script.contenders(_report({"t": steady}), "50%", source="b")["t"],
            )
        ],
        resamples=2000,
    )
    assert row["difference"] == 0.0
    assert row["low"] <= -0.4 and row["high"] >= 0.4


def test_bad_input_is_one_line_and_exit_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    old = _report({"torch-pruning": ["11"], "search": ["10"]})
    del old["accuracy"]["budgets"]["50%"]["contenders"]["search"]["runs"][0]["test"]["correct"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert script.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"race_paired: error: {path}: 50% search: no per-image results (run the benchmark again)"
    path.write_text(json.dumps(_report({"search": ["1"]})))
    assert script.main([str(path), "--budget", "25%"]) == 2
    assert "no budget 25% (it has 50%)" in capsys.readouterr().err
    assert script.main([str(path)]) == 2
    assert "has no torch-pruning (it has search)" in capsys.readouterr().err
    path.write_text("{}")
    assert script.main([str(path)]) == 2
    assert "neither a peers.py --accuracy nor a gp_vs_random.py report" in capsys.readouterr().err


def test_writes_json_and_markdown(script, tmp_path, capsys):
    path = tmp_path / "race.json"
    path.write_text(json.dumps(_report({"torch-pruning": ["1" * 8 + "0" * 2], "search": ["1" * 9 + "0"]})))
    out = tmp_path / "paired.json"
    assert script.main([str(path), "--resamples", "200", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["format"] == "vitprune.race_paired/1"
    assert saved["rows"][0]["difference"] == pytest.approx(0.1)
    assert "| search | 10 | +10.00 |" in capsys.readouterr().out
    assert np.isfinite(saved["rows"][0]["images_to_resolve"])


def test_runs_on_the_same_split_join_with_a_plus(script, tmp_path, capsys):
    race = tmp_path / "race.json"
    slack = tmp_path / "slack.json"
    tp = ["1" * 8 + "0" * 2]
    race.write_text(json.dumps(_report({"torch-pruning": tp, "search": ["1" * 9 + "0"]})))
    slack.write_text(json.dumps(_report({"torch-pruning": tp, "torch-pruning-slack": ["1" * 7 + "0" * 3]})))
    joined = f"{race}+{slack}"
    assert script.main([joined, "--against", "torch-pruning-slack", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "| search | 10 | +20.00 |" in out and "| torch-pruning | 10 | +10.00 |" in out
    assert "test splits 0 pooled" in out  # one split, not two

    other = _report({"torch-pruning-slack": ["1" * 10]}, test_seed=1)
    slack.write_text(json.dumps(other))
    assert script.main([joined, "--resamples", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{slack} has another test_seed than {race}: not the same test images")
    slack.write_text(json.dumps(_report({"torch-pruning": ["0" * 10]})))
    assert script.main([joined, "--resamples", "200"]) == 2
    assert "50% torch-pruning differs between the runs" in capsys.readouterr().err
    slack.write_text(json.dumps(_gp_report({"random": [["1" * 10]]})))
    assert script.main([joined, "--resamples", "200"]) == 2
    assert "only peers.py --accuracy reports can be joined with '+'" in capsys.readouterr().err


def _gp_report(methods: dict[str, list[list[str]]], *, budget="25%", test_seed=0):
    """A gp_vs_random report: per method, per search seed, one ``correct`` string per refit."""
    rows = []
    for method, searches in methods.items():
        for seed, refits in enumerate(searches):
            mean = sum(r.count("1") / len(r) for r in refits) / len(refits)
            rows.append({"method": method, "seed": seed, "recipe_test": {"mean": mean, "correct": refits}})
    return {"budget": budget, "test_seed": test_seed, "rows": rows}


def test_gp_vs_random_reports_pool_every_search_seed_and_count_uniform_once(script, capsys, tmp_path):
    report = _gp_report(
        {
            "gp_ei": [["1" * 9 + "0", "1" * 8 + "00"], ["1" * 10, "1" * 9 + "0"]],  # 0.85, 0.95
            "random": [["1" * 8 + "00", "1" * 8 + "00"], ["1" * 7 + "000", "1" * 9 + "0"]],  # 0.80, 0.80
            "uniform": [["1" * 6 + "0000"]] * 2,  # the same policy at both seeds
        }
    )
    found = script.contenders(report, "25%", source="gp.json")
    assert found["gp_ei"].correct.shape == (2, 2, 10) and found["uniform"].correct.shape == (1, 1, 10)
    result = script.compare([("gp.json", report)], budget=None, against="random", resamples=2000)
    rows = {row["contender"]: row for row in result["rows"]}
    assert rows["gp_ei"]["difference"] == pytest.approx(0.90 - 0.80)
    assert rows["uniform"]["difference"] == pytest.approx(0.60 - 0.80)
    assert result["budget"] == "25%"
    path = tmp_path / "gp.json"
    path.write_text(json.dumps(report))
    assert script.main([str(path), "--resamples", "200"]) == 0  # against random by default
    assert "| gp_ei | 10 | +10.00 |" in capsys.readouterr().out
    assert script.main([str(path), "--budget", "50%"]) == 2
    assert "a gp_vs_random report at 25%, not 50%" in capsys.readouterr().err


def test_search_seeds_are_resampled_as_well_as_fine_tunes(script):
    # Two searches that found opposite policies: steady within each, far apart between them.
    split = _gp_report({"gp_ei": [["1" * 40] * 2, ["0" * 40] * 2], "random": [["1" * 20 + "0" * 20] * 2]})
    row = script.compare([("a", split)], budget=None, against="random", resamples=2000)["rows"][0]
    assert row["difference"] == 0.0
    assert row["low"] <= -0.4 and row["high"] >= 0.4


def test_equal_counts_on_other_images_differ_by_exactly_nothing(script):
    # Shares of 9 runs per image summed image by image leave rounding (1.8e-15 in some of these
    # draws), which the "images to resolve" column turned into 1.6e30 images.
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = (rng.random((3, 3, 12)) < 0.8).astype(np.int8)
        r = c[:, :, rng.permutation(12)]  # the same number right in every run, on other images
        row = script.paired_difference([(script.Contender("c", c), script.Contender("r", r))], resamples=100)
        assert row["difference"] == 0.0 and row["images_to_resolve"] == float("inf")

"""benchmarks/refit_trials.py: bad input is one line and exit status 2, before any model is
loaded (its fine-tunes are the benchmark, a minute per policy: not run here)."""

from __future__ import annotations

import pytest

from vitprune.search.spec import SearchSpec


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import refit_trials

    return refit_trials


def test_a_missing_run_or_trial_is_one_line_and_exit_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing"), "--trials", "1"]) == 2
    assert "missing/spec.json" in capsys.readouterr().err
    (tmp_path / "spec.json").write_text(SearchSpec().model_dump_json())
    assert script.main([str(tmp_path), "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "trials/0003/policy.json" in err and len(err.strip().splitlines()) == 1


def test_without_trials_it_refits_every_completed_trial(script, tmp_path, capsys):
    from vitprune.search.rundir import RunDir

    (tmp_path / "spec.json").write_text(SearchSpec().model_dump_json())
    rows = ["trial,status,accuracy", "0,COMPLETED,0.9", "1,FAILED,", "2,COMPLETED,0.8", "3,ABANDONED,"]
    (tmp_path / "trials.csv").write_text("\n".join(rows) + "\n")
    assert script.completed_trials(RunDir(tmp_path)) == [0, 2]
    assert script.main([str(tmp_path), "--seeds", "3", "--seed0", "100"]) == 2  # no policy files here
    assert "trials/0000/policy.json" in capsys.readouterr().err

"""benchmarks/refit_trials.py: bad input is one line and exit status 2, before any model is
loaded (its fine-tunes are the benchmark, a minute per policy: not run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vitprune.search.spec import SearchSpec

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import refit_trials

        yield refit_trials
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_missing_run_or_trial_is_one_line_and_exit_status_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing"), "--trials", "1"]) == 2
    assert "missing/spec.json" in capsys.readouterr().err
    (tmp_path / "spec.json").write_text(SearchSpec().model_dump_json())
    assert script.main([str(tmp_path), "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "trials/0003/policy.json" in err and len(err.strip().splitlines()) == 1

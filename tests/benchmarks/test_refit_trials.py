"""benchmarks/refit_trials.py: bad input is one line and exit status 2, before any model is
loaded (its fine-tunes are the benchmark, a minute per policy: not run here)."""

from __future__ import annotations

import pytest
import torch

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


def test_fine_tunes_run_on_one_thread_unless_told(script, tmp_path, monkeypatch):
    """Tiny models on 2 loaded cores: with torch's default 2 threads a refit of 2 policies ran
    50 minutes without finishing, where the race's one-thread fine-tunes take 35 s each."""
    from vitprune.evaluators.dense import load_dense
    from vitprune.spaces import Policy

    (tmp_path / "spec.json").write_text(SearchSpec().model_dump_json())
    (tmp_path / "trials" / "0000").mkdir(parents=True)
    policy = Policy.keep_all(load_dense("vitprune_digits_vit")[1])
    (tmp_path / "trials" / "0000" / "policy.json").write_text(policy.to_json())

    class Loaded(Exception):
        pass

    def stop(*_args, **_kwargs):
        raise Loaded(torch.get_num_threads())

    monkeypatch.setattr(script, "cached_context", stop)
    before = torch.get_num_threads()
    try:
        for argv, threads in (([], 1), (["--threads", "2"], 2)):
            with pytest.raises(Loaded) as loaded:
                script.main([str(tmp_path), "--trials", "0", *argv])
            assert loaded.value.args == (threads,)
    finally:
        torch.set_num_threads(before)

"""Failures are visible and cost no more than they must: a deterministic failure is not retried,
an infrastructure failure is retried and the retry logged, trials.csv says what was raised, and a
search without any completed trial exits non-zero."""

import csv
import sys

import pytest
import torch
import yaml
from ray import cloudpickle

from vitprune.cli import main
from vitprune.evaluators.finetune import TrainingDiverged
from vitprune.search.lifecycle import Search
from vitprune.search.report import TRIAL_KEY
from vitprune.search.spec import SearchSpec
from vitprune.search.trainable import run_trial

pytestmark = pytest.mark.ray

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trainable runs in workers

TINY = {
    "name": "tiny-failures",
    "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
    "dense_training": {"epochs": 2},
    "budget": {"macs": "50%", "batch_size": 4},
    "finetune": {"epochs": 1, "steps": 2},
    "trials": {"total": 3, "concurrent": 1, "initial": 2, "max_failures": 1},
    "generation": {"num_restarts": 2, "raw_samples": 64, "maxiter": 20},
    "criteria": {"calibration_batches": 1},
}


def out_of_memory_once_then_diverging(config, plan):
    """Trial 0 runs out of memory on its first attempt; trial 1's loss becomes NaN; trial 2 is fine."""
    import vitprune.evaluators.trial as pipeline

    index = config[TRIAL_KEY]
    marker = plan.run.root / f"attempt-{index}"
    attempts = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempts))

    def failing(*args, **kwargs):
        if index == 0 and attempts == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        raise TrainingDiverged("loss became nan at epoch 1, step 2 (injected)")

    original = pipeline.finetune
    if index == 1 or (index == 0 and attempts == 1):
        pipeline.finetune = failing
    try:
        run_trial(config, plan)
    finally:
        pipeline.finetune = original


def _rows(run_dir):
    with open(run_dir / "trials.csv") as handle:
        return {int(row["trial"]): row for row in csv.DictReader(handle)}


def test_deterministic_failures_are_not_retried_and_infrastructure_ones_are(tmp_path, ray_cluster):
    spec = SearchSpec.model_validate(TINY)
    run_dir = tmp_path / "run"
    outcome = Search(spec, run_dir=run_dir, progress=lambda line: None).run(out_of_memory_once_then_diverging)
    rows = _rows(run_dir)
    assert [rows[i]["status"] for i in range(3)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert rows[1]["reason"] == "TrainingDiverged: loss became nan at epoch 1, step 2 (injected)"
    assert (run_dir / "attempt-0").read_text() == "2"  # out of memory: retried once, then completed
    assert (run_dir / "attempt-1").read_text() == "1"  # NaN loss: never run again
    log = (run_dir / "search.log").read_text()
    assert (
        "trial 0 failed and is retried (failure 1 of 1 allowed): OutOfMemoryError: CUDA out of memory" in log
    )
    assert "trial 1 failed: TrainingDiverged: loss became nan" in log
    assert outcome.completed == 2


def test_a_search_where_every_trial_fails_exits_with_status_1(tmp_path, monkeypatch, capsys, ray_cluster):
    spec = TINY | {"finetune": {"epochs": 1, "steps": 3, "lr": 1e6}, "trials": TINY["trials"] | {"total": 2}}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path / "cache"))
    code = main(["search", str(tmp_path / "search.yaml"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no trial completed (exit status 1)" in err
    rows = _rows(tmp_path / "run")
    assert [row["status"] for row in rows.values()] == ["FAILED", "FAILED"]
    assert all(row["reason"].startswith("TrainingDiverged: loss became nan") for row in rows.values())
    assert "retried" not in (tmp_path / "run" / "search.log").read_text()

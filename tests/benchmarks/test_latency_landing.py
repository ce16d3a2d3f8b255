"""benchmarks/latency_landing.py on a hand-made latency-budget run directory: every completed
trial timed again beside the dense model, and bad directories refused in one line."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import timm
import torch

from vitprune.evaluators import describe, models  # noqa: F401  (registers the digits ViT)
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.io import save_pruned
from vitprune.evaluators.surgery import apply_policy
from vitprune.search.spec import SearchSpec
from vitprune.spaces import Policy, build_policy, uniform_ratios

ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def make_run(root, *, metric="latency_ms", trials=2):
    torch.manual_seed(0)
    dense = timm.create_model("vitprune_digits_vit", **ARGS).eval()
    base = describe(dense, name="vitprune_digits_vit", model_args=ARGS)
    save_pruned(
        apply_policy(dense, Policy.keep_all(base)), Policy.keep_all(base), root / "dense"
    )  # as a plan does
    scores = get_criterion("magnitude")(dense, base=base)
    for index in range(trials):
        policy = build_policy(base, scores, uniform_ratios(2, mlp=0.5 - 0.2 * index))
        save_pruned(apply_policy(dense, policy), policy, root / "trials" / f"{index:04d}")
        metrics = {"trial": index, "latency_ms": 1.0 + index, "budget_cost": 0.9}
        (root / "trials" / f"{index:04d}" / "metrics.json").write_text(json.dumps(metrics))
    budget = {"latency_ms": "50%", "batch_size": 4} if metric == "latency_ms" else {"macs": "50%"}
    spec = SearchSpec.model_validate(
        {"name": "landing", "model": {"name": "vitprune_digits_vit", "args": ARGS}, "budget": budget}
    )
    plan = {
        "spec": spec.model_dump(mode="json"),
        "budget": {"metric": metric, "limit": 1.5},
        "dense_cost": 3.0,
    }
    (root / "plan.json").write_text(json.dumps(plan))
    return root


def run_main(argv):
    import latency_landing

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = latency_landing.main(argv)
    return status, out.getvalue(), err.getvalue()


def test_every_completed_trial_is_timed_again_beside_the_dense_model(benchmarks_on_path, tmp_path):
    run = make_run(tmp_path / "run")
    status, out, _ = run_main([str(run), "--repeats", "1"])
    assert status == 0
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row[0] for row in rows] == ["| 0", "| 1"]
    assert [(row[1], row[2]) for row in rows] == [("0.900", "1.000"), ("0.900", "2.000")]
    assert all(float(row[3]) > 0 for row in rows)
    assert "2 trials; within the limit: 1 as timed in the trial," in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": "macs"}, "its budget is 'macs', not latency_ms"),
        ({"trials": 0}, "holds no completed trial"),
    ],
)
def test_a_directory_that_is_not_a_latency_search_with_trials_is_one_line(
    benchmarks_on_path, tmp_path, change, message
):
    run = make_run(tmp_path / "run", **change)
    status, out, err = run_main([str(run)])
    assert status == 2 and not out
    assert err.strip() == f"latency_landing: error: {run}: {message}"


def test_a_directory_without_a_plan_is_one_line(benchmarks_on_path, tmp_path):
    status, _, err = run_main([str(tmp_path)])
    assert status == 2 and err.strip().endswith("holds no prepared search (no readable plan.json)")

"""The race against Torch-Pruning (benchmarks/peers.py) and the objective study
(benchmarks/objective_noise.py): their ``--quick`` paths on a tiny digits ViT and a tiny DeiT, run
in process, and the pieces they are built from. The search contender starts Ray and is slow: a
``slow`` test covers it."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch

from vitprune.spaces import Policy, macs
from vitprune.spaces.space import ALL_DIMENSIONS, WIDTHS

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
HAS_TORCH_PRUNING = importlib.util.find_spec("torch_pruning") is not None
needs_torch_pruning = pytest.mark.skipif(
    not HAS_TORCH_PRUNING, reason="torch-pruning is not installed (optional)"
)
BUDGETS = {"50%": 0.5, "25%": 0.25}
QUICK_SEARCH_VAL, QUICK_TEST, QUICK_EMBED, QUICK_PATCHES = 432, 360, 32, 16  # the --quick digits ViT


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """The benchmarks folder on ``sys.path`` and a fresh ``$VITPRUNE_CACHE``, for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        patch.setenv("VITPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def run_main(module_name: str, argv: list[str]) -> str:
    module = __import__(module_name)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert module.main(["--config", str(ROOT / "search.yaml"), *argv]) == 0
    return stdout.getvalue()


TORCH_PRUNING = ["torch-pruning", "matched", "torch-pruning-slack"]
CONTENDERS = ["uniform-all", "uniform-widths", "uniform-schedules"] + (
    TORCH_PRUNING if HAS_TORCH_PRUNING else []
)
QUICK_DEPTH = 2
SCHEDULES = [f"uniform-all/{name}" for name in ("tokens-from-0", "tokens-from-1", "no-tokens")]


@pytest.fixture(scope="module")
def peers(scripts, tmp_path_factory):
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    markdown = run_main("peers", ["--quick", "--contenders", *CONTENDERS, "--out", str(out)])
    return json.loads(out.read_text()), markdown


def test_every_contender_is_there_at_every_budget_and_lands_at_or_below_it(peers):
    report, _ = peers
    assert report["format"] == "vitprune.peers/1" and report["quick"] is True
    budgets = report["accuracy"]["budgets"]
    assert set(budgets) == set(BUDGETS)
    for key, entry in budgets.items():
        assert entry["target"] == BUDGETS[key]
        assert set(entry["contenders"]) == set(CONTENDERS) | set(SCHEDULES)
        for name, contender in entry["contenders"].items():
            slack = 1.01 if name == "torch-pruning-slack" else 1.0  # allowed 1 % over, for information
            assert 0 < contender["macs_ratio"] <= entry["target"] * slack, name
        for name in ("uniform-all", "uniform-widths"):  # the projection lands close to the budget
            assert entry["contenders"][name]["macs_ratio"] >= 0.9 * entry["target"]


def test_accuracies_are_fractions_over_the_right_images_and_the_summary_is_their_mean(peers):
    report, _ = peers
    for entry in report["accuracy"]["budgets"].values():
        for contender in entry["contenders"].values():
            (run,) = contender["runs"]  # --quick: one seed
            assert run["seed"] == 0 and run["finetune_s"] > 0
            assert run["search-val"]["images"] == QUICK_SEARCH_VAL and run["test"]["images"] == QUICK_TEST
            for split in ("search-val", "test", "zero_shot"):
                metrics = run[split]
                assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["agreement"] <= 1
                assert math.isfinite(metrics["cross_entropy"]) and metrics["cross_entropy"] > 0
                assert metrics["kl_to_dense"] >= -1e-6
                # per image, what benchmarks/race_paired.py pairs between contenders
                assert len(metrics["correct"]) == metrics["images"] and set(metrics["correct"]) <= {"0", "1"}
                assert metrics["correct"].count("1") == round(metrics["accuracy"] * metrics["images"])
            assert contender["test"] == {"mean": run["test"]["accuracy"], "sd": 0.0, "n": 1}
            assert contender["search-val"]["mean"] == run["search-val"]["accuracy"]


def test_the_report_names_its_data_and_test_split(peers):
    report, _ = peers
    assert report["accuracy"]["test_seed"] == 0
    data = report["accuracy"]["data"]
    assert data["source"] == "digits" and data["path"] is None
    assert data["images"]["train"] == 512  # --quick's max_train_samples
    runs = report["accuracy"]["budgets"]["50%"]["contenders"]["uniform-all"]["runs"]
    assert data["images"]["test"] == runs[0]["test"]["images"] == 360
    assert data["images"]["search-val"] == runs[0]["search-val"]["images"]


def test_one_recipe_for_every_contender(peers):
    report, _ = peers
    recipe = report["accuracy"]["recipe"]
    assert recipe["epochs"] == 1 and recipe["lr"] == pytest.approx(1e-3) and recipe["seeds"] == [0]
    assert recipe["kd"] == {"kind": "soft", "temperature": 2.0, "alpha": 0.5}


def test_uniform_policies_prune_exactly_their_dimensions(peers):
    report, _ = peers
    for entry in report["accuracy"]["budgets"].values():
        every, widths = entry["contenders"]["uniform-all"], entry["contenders"]["uniform-widths"]
        assert every["dimensions"] == list(ALL_DIMENSIONS) and widths["dimensions"] == list(WIDTHS)
        assert widths["structure"]["tokens_final"] == QUICK_PATCHES
        assert widths["structure"]["embed_dim"] == QUICK_EMBED
        assert widths["structure"]["attn_removed"] == widths["structure"]["act_removed"] == 0
        assert every["structure"]["tokens_final"] < QUICK_PATCHES
        assert (every["structure"]["embed_dim"] < QUICK_EMBED) == ("embed" in ALL_DIMENSIONS)


def test_each_token_schedule_of_the_uniform_policy_and_the_one_search_val_chooses(peers):
    """Tokens drop from each layer on in turn (the layers before keep all 16), or not at all; the
    schedule from layer ⌈depth/4⌉ (1 of 2) is the search's uniform start; the choice is
    Torch-Pruning's rule."""
    report, _ = peers
    for entry in report["accuracy"]["budgets"].values():
        contenders = entry["contenders"]
        schedules = {name: contenders[name] for name in SCHEDULES}
        assert schedules["uniform-all/tokens-from-1"]["structure"] == contenders["uniform-all"]["structure"]
        for start in range(QUICK_DEPTH):
            schedule = schedules[f"uniform-all/tokens-from-{start}"]
            assert schedule["token_start"] == start
            assert schedule["keep_tokens"][:start] == [QUICK_PATCHES] * start
            assert schedule["keep_tokens"][-1] < QUICK_PATCHES
        no_tokens = schedules["uniform-all/no-tokens"]
        assert no_tokens["keep_tokens"] == [QUICK_PATCHES] * QUICK_DEPTH
        assert "tokens" not in no_tokens["dimensions"]
        for schedule in schedules.values():
            assert 0.9 * entry["target"] <= schedule["macs_ratio"] <= entry["target"]

        ranks = {
            name: (run["search-val"]["accuracy"], -run["search-val"]["cross_entropy"])
            for name, run in ((name, schedules[name]["runs"][0]) for name in SCHEDULES)
        }
        chosen = contenders["uniform-schedules"]
        best = max(SCHEDULES, key=ranks.__getitem__)  # ties: the first
        assert f"uniform-all/{chosen['schedule']}" == best
        assert chosen["runs"] == schedules[best]["runs"]


@needs_torch_pruning
def test_torch_pruning_variants_are_all_tried_and_the_best_by_search_val_is_chosen(peers):
    report, _ = peers
    for entry in report["accuracy"]["budgets"].values():
        rows = entry["torch_pruning_variants"]
        assert [row["variant"] for row in rows] == ["l1/head_dims", "l2/heads", "taylor/bottleneck"]
        tried = [row for row in rows if row["reached"]]
        assert tried and all(len(row["runs"]) == 1 and row["macs_ratio"] <= entry["target"] for row in tried)
        assert all(row["note"] == "cannot reach the budget" for row in rows if not row["reached"])

        def rank(row):
            return row["runs"][0]["search-val"]["accuracy"], -row["runs"][0]["search-val"]["cross_entropy"]

        chosen = entry["contenders"]["torch-pruning"]
        assert chosen["variant"] == max(tried, key=rank)["variant"]
        assert chosen["runs"][0] == next(r for r in tried if r["variant"] == chosen["variant"])["runs"][0]
        assert entry["contenders"]["matched"]["macs_ratio"] <= chosen["macs_ratio"]
        slack = entry["contenders"]["torch-pruning-slack"]
        assert slack["limit_ratio"] == pytest.approx(1.01 * entry["target"])
        assert 0 < slack["macs_ratio"] <= slack["limit_ratio"]
        assert len(entry["torch_pruning_slack_variants"]) == len(rows)


def test_latency_rows_are_finite_and_consistent_for_every_timed_model(peers):
    report, _ = peers
    latency = report["latency"]
    timed = {k: m for k, m in latency["models"].items() if "error" not in m and m.get("reached", True)}
    assert {(m["contender"], m["budget"]) for m in timed.values()} >= {
        (f"vitprune {name}", budget)
        for name in ("uniform-all", "uniform-widths", "joint (all six)")
        for budget in BUDGETS.values()
    }
    rows = latency["rows"]
    assert len(rows) == 2 * len(timed)  # batch 1 and 2
    for row in rows:
        assert row["macs_ratio"] <= row["budget"]
        assert math.isfinite(row["latency_ratio"]) and row["latency_ratio"] > 0
        assert row["pruned_min_ms"] <= row["pruned_ms"] <= row["pruned_max_ms"]
        assert row["latency_per_macs"] == pytest.approx(row["latency_ratio"] / row["macs_ratio"])
    assert latency["dense_macs"] > 0 and latency["threads"] == 2


def test_goals_and_tables(peers):
    report, markdown = peers
    accuracy_goals = [g for g in report["goals"] if "test ≥" in g["goal"]]
    latency_goals = [g for g in report["goals"] if "latency ÷ MACs" in g["goal"]]
    # uniform-all and uniform-schedules at each budget
    assert len(accuracy_goals) == (4 if HAS_TORCH_PRUNING else 0)
    assert len(latency_goals) == (12 if HAS_TORCH_PRUNING else 0)  # 3 policies × 2 budgets × 2 batches
    assert len(report["goals"]) == len(accuracy_goals) + len(latency_goals)
    for goal in accuracy_goals:
        assert goal["met"] == (goal["vitprune"] >= goal["torch_pruning"])
        paired = goal["paired"]  # the same difference, measured image by image, and its interval
        assert paired["difference"] == pytest.approx(goal["vitprune"] - goal["torch_pruning"])
        assert paired["low"] <= paired["difference"] <= paired["high"]
        assert paired["decided"] in {"met", "not met", "not resolved"}
        assert f"95 % interval [{100 * paired['low']:+.2f}, {100 * paired['high']:+.2f}]" in markdown
    for goal in latency_goals:
        assert goal["met"] == (goal["vitprune"] <= goal["torch_pruning"])
    assert "| budget | contender | MACs ratio | search-val | test | structure |" in markdown
    assert "## Latency: deit_small_patch16_224" in markdown


# -- the pieces ----------------------------------------------------------------------------------


def test_prune_to_macs_takes_the_largest_step_of_the_staircase_under_the_target(scripts):
    import peers_torch_pruning as tp

    def staircase(ratio: float) -> float:  # MACs of a model pruned in eighths of its width
        return 1000 * (1 - math.floor(ratio * 8) / 8) ** 2  # 1000, 765.6, 562.5, 390.6, 250, ...

    found = tp.prune_to_macs(lambda ratio: ratio, 450, dense_macs=1000, max_evaluations=12, count=staircase)
    assert found.reached and found.macs == 390.625
    assert 3 / 8 <= found.ratio < 4 / 8 and found.evaluations <= 12


def test_prune_to_macs_says_when_no_ratio_fits(scripts):
    import peers_torch_pruning as tp

    def refuses_beyond_half(ratio: float) -> float:
        if ratio > 0.5:
            raise ValueError("would remove every head")
        return ratio

    found = tp.prune_to_macs(
        refuses_beyond_half, 100, dense_macs=1000, max_evaluations=8, count=lambda r: 1000 * (1 - r) ** 2
    )
    assert not found.reached and found.macs > 100 and found.ratio <= 0.5


@pytest.fixture(scope="module")
def tiny_vit():
    import timm

    from vitprune.evaluators import models  # noqa: F401  (registers the digits ViT: alone, nothing else had)

    torch.manual_seed(0)
    return timm.create_model("vitprune_digits_vit", embed_dim=32, depth=2, num_heads=2).eval()


@needs_torch_pruning
def test_the_recipe_variant_is_the_gpu_checks_recipe(scripts, tiny_vit):
    import gpu_torch_pruning as recipe
    import peers_torch_pruning as tp

    ours, theirs = tp.prune(tiny_vit, 0.3, tp.RECIPE).state_dict(), recipe.prune(tiny_vit, 0.3).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


@needs_torch_pruning
@pytest.mark.parametrize(
    ("variant", "embed", "heads", "head_dim"),
    [("l1/head_dims", 24, 2, 8), ("l2/heads", 24, 1, 16), ("taylor/bottleneck", 32, 2, 8)],
)
def test_each_structure_prunes_what_its_name_says(scripts, tiny_vit, variant, embed, heads, head_dim):
    import peers_torch_pruning as tp

    batches = [(torch.randn(4, 1, 16, 16), torch.arange(4))]
    model = tp.prune(tiny_vit, 0.25, tp.Variant.parse(variant), calibration=batches)
    structure = tp.structure(model)
    assert structure["embed_dim"] == embed
    assert structure["num_heads"] == [heads] and structure["head_dims"] == [head_dim]
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_uniform_policy_lands_on_the_budget_and_moves_only_its_dimensions(scripts, tiny_vit):
    from peers_vitprune import uniform_policy

    from vitprune.evaluators import describe
    from vitprune.evaluators.criteria import get_criterion

    base = describe(
        tiny_vit, name="vitprune_digits_vit", model_args={"embed_dim": 32, "depth": 2, "num_heads": 2}
    )
    scores = get_criterion("magnitude")(tiny_vit, base=base)
    dense = macs(Policy.keep_all(base))
    for dimensions in (ALL_DIMENSIONS, WIDTHS):
        policy = uniform_policy(base, scores, budget_macs=0.25 * dense, dimensions=dimensions).policy
        assert 0.9 * 0.25 <= macs(policy) / dense <= 0.25
        summary = policy.summary()
        assert (summary["tokens_final"] < base.num_patches) == ("tokens" in dimensions)
        assert (summary["embed_dim"] < base.embed_dim) == ("embed" in dimensions)
        assert summary["heads"] < base.depth * base.num_heads and summary["mlp_ratio"] < 1
    with pytest.raises(Exception, match="unknown 'width'"):
        uniform_policy(base, scores, budget_macs=0.25 * dense, dimensions=["width"])


def test_a_kept_search_point_decodes_onto_another_model_as_the_search_decoded_it(scripts, tiny_vit, tmp_path):
    """``peers.py --latency`` and ``attention_padding.py`` decode a kept search's best point onto
    DeiT-S: the point and space read back from the run directory, projected on the new model."""
    from peers_vitprune import kept_search_point, search_point_policy, uniform_policy

    from vitprune.evaluators import describe
    from vitprune.evaluators.criteria import get_criterion
    from vitprune.search.spec import SpaceSpec

    base = describe(
        tiny_vit, name="vitprune_digits_vit", model_args={"embed_dim": 32, "depth": 2, "num_heads": 2}
    )
    scores = get_criterion("magnitude")(tiny_vit, base=base)
    dense = macs(Policy.keep_all(base))
    space = SpaceSpec(dimensions=list(WIDTHS))
    run = tmp_path / "search-25pct"
    run.mkdir()
    (run / "spec.json").write_text(json.dumps({"name": "kept", "space": space.model_dump(mode="json")}))
    (run / "best_policy.json").write_text(json.dumps({"metrics": {"point": space.build(2).uniform_point()}}))
    assert kept_search_point(tmp_path, 0.5) is None  # that search did not finish
    kept = kept_search_point(tmp_path, 0.25)
    fit = search_point_policy(kept, base, scores, budget_macs=0.25 * dense)
    uniform = uniform_policy(base, scores, budget_macs=0.25 * dense, dimensions=WIDTHS)
    assert fit.policy == uniform.policy and fit.cost == macs(fit.policy) <= 0.25 * dense


# -- the objective study ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise(scripts, tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "noise.json"
    markdown = run_main("objective_noise", ["--quick", "--out", str(out)])
    return json.loads(out.read_text()), markdown


def test_the_study_measures_every_policy_with_every_seed_in_both_splits(noise):
    report, _ = noise
    assert report["format"] == "vitprune.objective_noise/1"
    assert [s["search_val_images"] for s in report["setups"]] == [216, 432]  # 15 % and 30 % of 1,437
    for setup in report["setups"]:
        assert len(setup["policies"]) == report["policies"] == 3
        for policy in setup["policies"]:
            assert 0 < policy["macs_ratio"] <= report["budget"] == 0.25
            assert [run["seed"] for run in policy["runs"]] == [0, 1, 2]  # 2 objective seeds, 1 truth seed
            for run in policy["runs"]:
                assert run["search-val"]["images"] == setup["search_val_images"]
                assert run["test"]["images"] == QUICK_TEST
                assert 0 <= run["train"]["accuracy"] <= 1


def test_every_candidate_is_scored_against_the_truth(noise):
    report, markdown = noise
    rows = report["analysis"]["objectives"]
    names = {row["objective"] for row in rows}
    assert {
        "accuracy, seed 0",
        "accuracy, mean of 2 seeds",
        "KL to dense, seed 0",
        "cross-entropy, seed 0",
    } <= names
    assert len(rows) == 2 * len(names)  # every candidate in both setups
    for row in rows:
        rho = row["spearman"]
        assert math.isnan(rho) or -1 - 1e-9 <= rho <= 1 + 1e-9
        assert row["regret"] >= 0 and 0 <= row["first_choice_truth"] <= 1
    for entry in report["analysis"]["noise"]:
        assert entry["search_val_sd_over_seeds"] >= 0 and entry["truth_sd_over_policies"] >= 0
        assert entry["truth_range"][0] <= entry["truth_range"][1]
    assert "| search-val images | objective | fine-tunes per trial | Spearman ρ with test |" in markdown
    baseline = [row for row in rows if row["objective"] == "accuracy, seed 0"]
    assert all(row["delta_rho"] == 0 or math.isnan(row["delta_rho"]) for row in baseline)


def test_a_saved_study_is_analysed_again_without_fine_tuning(noise, tmp_path):
    report, _ = noise
    saved = tmp_path / "noise.json"
    saved.write_text(json.dumps(report))
    again = tmp_path / "again.json"
    run_main("objective_noise", ["--analyse", str(saved), "--bootstrap", "50", "--out", str(again)])
    reanalysed = json.loads(again.read_text())["analysis"]
    assert json.dumps(reanalysed, sort_keys=True) == json.dumps(
        report["analysis"], sort_keys=True
    )  # NaN-safe


def test_agreement_with_the_truth_has_exact_values(scripts):
    from objective_noise import agreement

    truth = [0.90, 0.95, 0.97, 0.93]
    same = agreement([1.0, 2.0, 4.0, 1.5], truth, resampled=[])
    assert same["spearman"] == pytest.approx(1.0) and same["regret"] == 0.0
    reversed_ = agreement([4.0, 2.0, 1.0, 3.0], truth, resampled=[])
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert reversed_["first_choice_truth"] == 0.90 and reversed_["regret"] == pytest.approx(0.07)
    tied = agreement([1.0, 1.0, 1.0, 1.0], truth, resampled=[])
    assert math.isnan(tied["spearman"]) and tied["first_choice_truth"] == 0.90  # ties: the first policy


def test_the_paired_comparison_counts_resamples_where_an_objective_ranks_better(scripts):
    from objective_noise import agreement

    truth = [0.90, 0.95, 0.97, 0.93]
    resampled = [[0, 1, 2, 3], [0, 0, 2, 2], [1, 1, 1, 1]]  # ρ: 1 vs 0.4; 1 vs 1; both constant (dropped)
    result = agreement([1.0, 3.0, 4.0, 2.0], truth, resampled=resampled, baseline=[1.0, 2.0, 3.0, 4.0])
    assert result["delta_rho"] == pytest.approx(1.0 - 0.4)
    assert result["p_better"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["spearman_sd"] == 0.0  # ρ = 1 on both usable resamples


# -- the search contender (Ray) -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_the_search_contender_is_fine_tuned_from_dense_with_the_trials_recipe(scripts, tmp_path):
    out = tmp_path / "peers.json"
    argv = ["--quick", "--contenders", "search", "--search-dir", str(tmp_path / "runs"), "--out", str(out)]
    run_main("peers", argv)
    report = json.loads(out.read_text())
    for entry in report["accuracy"]["budgets"].values():
        search = entry["contenders"]["search"]
        assert search["macs_ratio"] <= entry["target"]
        assert search["search"]["trials"] == 2 and search["search"]["completed"] == 2
        assert set(search["search"]["point"]) >= {"heads", "mlp", "tokens", "drop_attn"}
        # Seed 0 of the common recipe, from the dense weights, is the trial's own fine-tune.
        assert search["runs"][0]["test"]["accuracy"] == search["search"]["trial_model_test"]
        assert search["runs"][0]["search-val"]["accuracy"] == search["search"]["trial_search_val"]
    contenders = {row["contender"] for row in report["latency"]["rows"]}
    assert "vitprune search (its point)" in contenders
    # --latency alone times the best points of searches kept from an earlier run.
    later = tmp_path / "latency.json"
    run_main("peers", ["--quick", "--latency", "--search-runs", str(tmp_path / "runs"), "--out", str(later)])
    rows = json.loads(later.read_text())["latency"]["rows"]
    timed = {(row["contender"], row["budget"]) for row in rows}
    assert {("vitprune search (its point)", budget) for budget in BUDGETS.values()} <= timed


def test_a_negative_test_seed_is_one_line_and_exit_status_2(scripts, capsys):
    import peers

    with pytest.raises(SystemExit) as stopped:
        peers.parse_args(["--test-seed", "-1"])
    assert stopped.value.code == 2
    assert "argument --test-seed: must be >= 0, got -1" in capsys.readouterr().err

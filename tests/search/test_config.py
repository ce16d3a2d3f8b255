"""The search spec: validation with one-line key-path errors, budgets, and the Ray cluster YAML form."""

from pathlib import Path

import pytest
import yaml

from vitprune.cli import main
from vitprune.search.spec import SearchSpec, load_spec
from vitprune.spaces import InputError

ROOT = Path(__file__).resolve().parents[2]


def _load(tmp_path, doc):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_spec(path)


def test_the_embedded_default_is_a_valid_ray_cluster_yaml():
    """Ray's own validator accepts search.yaml and keeps metadata.vitprune; a top-level key fails."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    doc = yaml.safe_load((ROOT / "search.yaml").read_text())
    config = prepare_config(doc)
    validate_config(config)
    assert config["metadata"]["vitprune"]["budget"]["macs"] == "50%"
    with pytest.raises(Exception, match="'vitprune' was unexpected"):
        validate_config(prepare_config({**doc, "vitprune": {}}))


def test_the_embedded_default_spec():
    spec, prefix = load_spec(ROOT / "search.yaml")
    assert prefix == "metadata.vitprune."
    assert spec.budget.metric == "macs" and spec.budget.limit(1000) == 500
    assert spec.trials.total == 24 and spec.trials.concurrent == 2
    assert set(spec.space.dimensions) == {"heads", "qk", "v", "mlp", "tokens", "depth", "embed"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"budget": {"macs": 0}}, "budget.macs: must be > 0"),
        ({"budget": {"macs": "-5%"}}, "budget.macs: expected a number or a percentage"),
        ({"budget": {"macs": "50%", "params": 1}}, "budget: give exactly one of macs, params, latency_ms"),
        ({"trials": {"total": 4, "initial": 8}}, "trials: initial (8) must not exceed total (4)"),
        ({"space": {"dimensions": ["heads", "width"]}}, "space.dimensions.1: Input should be"),
        ({"objective": "speed"}, "objective: Input should be 'accuracy' or 'accuracy, -latency_ms'"),
        ({"resources": {"gpu": -1}}, "resources.gpu: Input should be greater than or equal to 0"),
        ({"finetune": {"kd": {"kind": "medium"}}}, "finetune.kd.kind: Input should be 'soft' or 'hard'"),
        ({"trails": {}}, "trails: unknown key"),
        (
            {"cluster_name": "c", "metadata": {"vitprune": {"budget": {"macs": -1}}}},
            "metadata.vitprune.budget.macs: must be > 0",
        ),
    ],
)
def test_bad_specs_are_one_line_with_the_key_path(tmp_path, doc, message):
    with pytest.raises(InputError) as error:
        _load(tmp_path, doc)
    text = str(error.value)
    assert message in text and "\n" not in text


def test_budgets_are_absolute_or_relative():
    assert SearchSpec.model_validate({"budget": {"macs": "40%"}}).budget.limit(2e9) == pytest.approx(8e8)
    assert SearchSpec.model_validate({"budget": {"latency_ms": 12.5}}).budget.limit(99.0) == 12.5
    assert SearchSpec.model_validate({"budget": {"params": "1e6"}}).budget.limit(5e6) == 1e6


def test_smoke_settings_are_tiny():
    spec = load_spec(ROOT / "search.yaml")[0].smoke()
    assert spec.trials.total == 3 and spec.finetune.steps == 5 and spec.dense_training.epochs <= 3


def test_the_cli_rejects_a_bad_config_before_starting_anything(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"budget": {"macs": 0}, "run_dir": str(tmp_path / "run")})
    )
    assert main(["search", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "budget.macs: must be > 0" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_gp_batches_wait_for_running_trials_from_the_sobol_budget_on_unless_turned_off():
    from vitprune.search.lifecycle import synchronous_from

    spec = SearchSpec()
    assert spec.trials.synchronous is True
    assert synchronous_from(spec) == spec.trials.initial
    off = spec.model_copy(update={"trials": spec.trials.model_copy(update={"synchronous": False})})
    assert synchronous_from(off) is None
    # Random search has no GP: its Sobol points never depend on which trials have ended.
    random = spec.model_copy(update={"generation": spec.generation.model_copy(update={"method": "random"})})
    assert synchronous_from(random) is None

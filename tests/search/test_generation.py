"""The generation strategy: which nodes, which model, which acquisition function, which budget."""

import pytest
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.models import SingleTaskGP

from vitprune.search import GenerationConfig, build_generation_strategy


def _gp_spec(strategy):
    (spec,) = strategy.nodes_by_name["GP"].generator_specs
    return spec


def test_gp_ei_is_sobol_then_single_task_gp_with_log_nei():
    strategy = build_generation_strategy(
        GenerationConfig(initial_trials=5, seed=7, num_restarts=3, raw_samples=96, maxiter=40),
        multi_objective=False,
    )
    assert [node.name for node in strategy._nodes] == ["Sobol", "GP"]
    (sobol,) = strategy.nodes_by_name["Sobol"].generator_specs
    assert sobol.generator_enum.value == "Sobol"
    assert sobol.generator_kwargs == {"seed": 7}
    spec = _gp_spec(strategy)
    assert spec.generator_enum.value == "BoTorch"
    assert spec.generator_kwargs["botorch_acqf_class"] is qLogNoisyExpectedImprovement
    (model,) = spec.generator_kwargs["surrogate_spec"].model_configs
    assert model.botorch_model_class is SingleTaskGP
    assert spec.generator_kwargs["fit_tracking_metrics"] is False
    assert spec.generator_gen_kwargs == {
        "model_gen_options": {
            "optimizer_kwargs": {"num_restarts": 3, "raw_samples": 96, "options": {"maxiter": 40}}
        }
    }
    # Leave Sobol after 5 counted trials, once 2 (= 5 // 2) of them have data.
    thresholds = [c.threshold for c in strategy.nodes_by_name["Sobol"].transition_criteria]
    assert thresholds == [5, 2]


def test_pareto_objective_uses_log_nehvi():
    strategy = build_generation_strategy(GenerationConfig(), multi_objective=True)
    assert (
        _gp_spec(strategy).generator_kwargs["botorch_acqf_class"] is qLogNoisyExpectedHypervolumeImprovement
    )


def test_random_is_sobol_for_every_trial():
    strategy = build_generation_strategy(GenerationConfig(method="random", seed=3), multi_objective=False)
    assert [node.name for node in strategy._nodes] == ["Sobol"]
    (node,) = strategy._nodes
    assert node.transition_criteria == [] and node.pausing_criteria == []


def test_defaults_are_the_measured_ones():
    config = GenerationConfig()
    assert (config.method, config.num_restarts, config.raw_samples) == ("gp_ei", 4, 256)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "bayes"}, "method: 'bayes' is not one of gp_ei, random"),
        ({"initial_trials": 0}, "initial_trials: must be at least 1"),
        ({"num_restarts": 0}, "num_restarts: must be at least 1"),
        ({"num_restarts": 8, "raw_samples": 4}, r"raw_samples: must be at least num_restarts \(8\)"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)

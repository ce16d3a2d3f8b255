"""The latency model's arithmetic: interpolation, op accounting, the whole-model correction,
serialisation. Timings are never asserted; measurements are replaced by known functions."""

import json
import math
import random

import pytest
import torch
from helpers import random_policy, tiny_model

from vitprune.evaluators import latency_model as lm
from vitprune.evaluators.latency_model import LatencyModel, Table, fit_latency_model
from vitprune.spaces import LayerPolicy, Policy


def test_table_is_exact_on_the_grid_multilinear_between_and_clamped_outside():
    xs, ys = (1.0, 2.0, 4.0), (10.0, 30.0)

    def f(x, y):  # bilinear: multilinear interpolation reproduces it exactly
        return 1 + 2 * x + 3 * y + 0.5 * x * y

    table = Table((xs, ys), tuple(f(x, y) for x in xs for y in ys))
    for x in xs:
        for y in ys:
            assert table(x, y) == f(x, y)
    assert table(3.0, 25.0) == pytest.approx(f(3.0, 25.0))
    assert table(1.5, 12.0) == pytest.approx(f(1.5, 12.0))
    assert table(0.0, 5.0) == f(1.0, 10.0) and table(9.0, 99.0) == f(4.0, 30.0)
    assert Table(((7.0,), xs), (1.0, 2.0, 3.0))(123.0, 3.0) == pytest.approx(2.5)  # one-point axis


def _linear_tables(base) -> dict[str, Table]:
    """Tables whose values encode their arguments: each op's cost is linear in its sizes, with
    a distinct weight per op, so a wrong op count or a wrong width changes the total."""
    n_axis = (1.0, float(base.num_prefix_tokens + base.num_patches))
    w_axis = (1.0, 4096.0)
    heads, dims = (1.0, float(base.num_heads)), (1.0, float(base.head_dim))

    def grid2(weight):
        return Table((n_axis, w_axis), tuple(weight * n * w for n in n_axis for w in w_axis))

    return {
        "expand": grid2(1.0),
        "reduce": grid2(1e-3),
        "gelu": grid2(1e-6),
        "sdpa": Table(
            (n_axis, heads, dims), tuple(1e3 * n * h * d for n in n_axis for h in heads for d in dims)
        ),
        "norm": Table((n_axis,), tuple(1e6 * n for n in n_axis)),
        "select": Table((n_axis,), tuple(1e9 * n for n in n_axis)),
    }


def _expected(policy: Policy, fixed: float) -> float:
    """The same sum, written out per op from the policy's own fields."""
    base, total = policy.base, fixed
    for layer, tokens_in in zip(policy.layers, policy.tokens_in, strict=True):
        n_in = base.num_prefix_tokens + tokens_in
        n_out = base.num_prefix_tokens + layer.keep_tokens
        if layer.attention:
            h, dqk, dv = len(layer.heads), len(layer.qk[0]), len(layer.v[0])
            total += 1e6 * n_in  # norm1
            total += n_in * h * (2 * dqk + dv)  # qkv
            total += 1e3 * n_in * h * max(dqk, dv)  # padded fused attention
            total += 1e-3 * n_in * h * dv  # proj
            if layer.keep_tokens < tokens_in:
                total += 1e9 * n_in  # class-token row, top-k, gather
        hidden = len(layer.mlp)
        if hidden == 0:
            continue  # no neuron kept: the MLP sub-layer is gone
        if not layer.activation and hidden > policy.embed_dim / 2:
            total += 1e6 * n_out + n_out * policy.embed_dim  # norm2 + merged Linear(D', D')
        else:
            total += 1e6 * n_out + n_out * hidden + 1e-3 * n_out * hidden  # norm2, fc1, fc2
            if layer.activation:
                total += 1e-6 * n_out * hidden
    return total


@pytest.mark.parametrize("seed", range(6))
def test_raw_counts_every_op_of_every_layer_with_its_sizes(seed):
    _, base = tiny_model("deit")
    policy = random_policy(base, random.Random(seed))
    model = LatencyModel(
        device="cpu", batch_size=2, dtype="float32", fixed_ms=0.25, tables=_linear_tables(base)
    )
    assert model.raw(policy) == pytest.approx(_expected(policy, 0.25), rel=1e-12)


def test_a_model_with_every_block_removed_costs_the_fixed_part():
    _, base = tiny_model("deit")
    empty = Policy(
        base=base,
        layers=tuple(LayerPolicy(False, (), (), (), False, (), base.num_patches) for _ in range(base.depth)),
    )
    model = LatencyModel(
        device="cpu",
        batch_size=2,
        dtype="float32",
        fixed_ms=0.25,
        tables=_linear_tables(base),
        correction=(1, 3),
    )
    assert model.raw(empty) == 0.25 and model(empty) == 1 + 3 * 0.25


def test_the_correction_is_a_power_law_fitted_on_whole_models_and_held_out_error_is_reported(monkeypatch):
    """What the tables miss grows with the model: measured = 1.3·raw^1.2 here. One factor left the
    dense DeiT-S 16-25 % under its measured latency at batch 8; the power law recovers both."""
    _, base = tiny_model("deit")
    tables = _linear_tables(base)
    truth = LatencyModel(device="cpu", batch_size=2, dtype="float32", fixed_ms=0.0, tables=tables)
    beta, gamma = 1.3, 1.2

    def measured(policies, **_):
        return [beta * truth.raw(policy) ** gamma for policy in policies]

    monkeypatch.setattr(lm, "measure_tables", lambda base, **_: tables)
    monkeypatch.setattr(lm, "measure_policies", measured)
    rng = random.Random(0)
    calibration = [random_policy(base, rng) for _ in range(4)]
    holdout = [random_policy(base, rng) for _ in range(3)]
    model = fit_latency_model(
        base, batch_size=2, device=torch.device("cpu"), calibration=calibration, holdout=holdout
    )
    assert model.fixed_ms == 0.0  # the every-block-removed model, measured
    assert model.correction == pytest.approx((0.0, beta), rel=1e-9)
    assert model.exponent == pytest.approx(gamma, rel=1e-9)
    assert model.dense_ms == pytest.approx(measured([Policy.keep_all(base)])[0], rel=1e-12)
    for policy in [*holdout, Policy.keep_all(base)]:
        assert model(policy) == pytest.approx(measured([policy])[0], rel=1e-9)
    assert model.holdout_error == pytest.approx(0.0, abs=1e-9) and model.holdout_max_error is not None
    assert LatencyModel.from_json(model.to_json()) == model


def test_a_model_saved_before_the_exponent_predicts_with_one_factor():
    _, base = tiny_model("deit")
    model = LatencyModel(
        device="cpu",
        batch_size=2,
        dtype="float32",
        fixed_ms=0.0,
        tables=_linear_tables(base),
        correction=(0, 2),
    )
    document = json.loads(model.to_json())
    del document["exponent"], document["dense_ms"]
    old = LatencyModel.from_json(json.dumps(document))
    policy = random_policy(base, random.Random(9))
    assert old.exponent == 1.0 and old.dense_ms is None and old(policy) == 2 * model.raw(policy)


def test_the_power_law_minimises_the_squared_log_error(monkeypatch):
    _, base = tiny_model("deit")
    tables = _linear_tables(base)
    truth = LatencyModel(device="cpu", batch_size=2, dtype="float32", fixed_ms=0.0, tables=tables)
    rng = random.Random(3)
    calibration = [random_policy(base, rng) for _ in range(5)]
    dense = Policy.keep_all(base)
    factors = iter([1.1, 0.9, 1.2, 1.0, 0.8])
    truths = [(p, next(factors) * truth.raw(p)) for p in calibration] + [(dense, 1.5 * truth.raw(dense))]

    def measured(policies, **_):
        return [next((ms for known, ms in truths if known == p), 0.0) for p in policies]

    monkeypatch.setattr(lm, "measure_tables", lambda base, **_: tables)
    monkeypatch.setattr(lm, "measure_policies", measured)
    model = fit_latency_model(base, batch_size=2, device=torch.device("cpu"), calibration=calibration)
    assert model.correction[0] == 0.0

    def loss(b, g):  # the dense model is fitted with the calibration policies
        return sum((math.log(b * truth.raw(p) ** g) - math.log(ms)) ** 2 for p, ms in truths)

    b, g = model.correction[1], model.exponent
    assert loss(b, g) <= min(loss(b * 0.999, g), loss(b * 1.001, g), loss(b, g - 1e-4), loss(b, g + 1e-4))
    assert g != 1.0


def test_a_power_law_that_would_make_larger_models_faster_falls_back_to_one_factor():
    _, base = tiny_model("deit")
    model = LatencyModel(
        device="cpu", batch_size=2, dtype="float32", fixed_ms=0.0, tables=_linear_tables(base)
    )
    rng = random.Random(11)
    policies = sorted((random_policy(base, rng) for _ in range(4)), key=model.raw)
    inverted = [1.0 / model.raw(policy) for policy in policies]  # the largest measured fastest
    assert lm.power_law(model, policies, inverted) == (lm.relative_factor(model, policies, inverted), 1.0)
    same = [policies[0]] * 3
    assert lm.power_law(model, same, [2.0, 2.0, 2.0])[1] == 1.0


def test_the_dense_model_is_measured_in_the_calibration_run(monkeypatch):
    """A percentage latency budget is a share of the dense latency, and the projection sees the
    model fitted on the calibration policies: both must come from one interleaved measurement.
    The plan measured the dense model apart, a moment later; on a loaded machine the two drifted."""
    _, base = tiny_model("deit")
    tables = _linear_tables(base)
    runs = []

    def measured(policies, **_):
        runs.append(list(policies))
        return [float(len(runs)) * (1 + i) for i in range(len(policies))]

    monkeypatch.setattr(lm, "measure_tables", lambda base, **_: tables)
    monkeypatch.setattr(lm, "measure_policies", measured)
    rng = random.Random(5)
    calibration = [random_policy(base, rng) for _ in range(3)]
    model = fit_latency_model(base, batch_size=2, device=torch.device("cpu"), calibration=calibration)
    (run,) = [run for run in runs if Policy.keep_all(base) in run]
    assert run[1:] == calibration
    assert model.dense_ms == float(runs.index(run) + 1)
    assert LatencyModel.from_json(model.to_json()) == model


def test_a_real_fit_on_a_tiny_model_has_full_tables_and_round_trips_through_json():
    _, base = tiny_model("deit")
    rng = random.Random(1)
    model = fit_latency_model(
        base,
        batch_size=2,
        device=torch.device("cpu"),
        warmup=0,
        repeats=1,
        calibration=[random_policy(base, rng) for _ in range(2)],
    )
    for name, table in model.tables.items():
        size = math.prod(len(axis) for axis in table.axes)
        assert len(table.values) == size and all(v > 0 and math.isfinite(v) for v in table.values), name
    assert model.tables["expand"].axes[2][-1] >= 3 * base.attn_dim  # the dense qkv is on the grid
    assert model.tables["expand"].axes[1] == (base.embed_dim,)  # the residual width is not searched
    assert model.tables["sdpa"].axes[1] == (1, base.num_heads // 2, base.num_heads)
    assert model.correction != (0.0, 1.0)
    assert LatencyModel.from_json(model.to_json()) == model
    policy = random_policy(base, rng)
    assert LatencyModel.from_json(model.to_json())(policy) == model(policy)


def test_with_the_residual_width_searched_the_tables_cover_narrower_streams():
    _, base = tiny_model("deit")
    rng = random.Random(4)
    model = fit_latency_model(
        base, batch_size=2, device=torch.device("cpu"), warmup=0, repeats=1, embed=True,
        calibration=[random_policy(base, rng) for _ in range(2)],
    )  # fmt: skip
    widths = lm.embed_grid(base.embed_dim, 8)
    assert widths == (8, 16, 32, 48, 64) and model.tables["expand"].axes[1] == widths
    assert model.tables["norm"].axes[1] == widths and model.fixed.axes == (widths,)
    assert LatencyModel.from_json(model.to_json()) == model
    no_blocks = tuple(
        LayerPolicy(False, (), (), (), True, (), base.num_patches) for _ in range(base.depth)
    )  # the fixed part alone, at each measured residual width
    for width, fixed in zip(widths, model.fixed.values, strict=True):
        assert model.raw(Policy(base=base, layers=no_blocks, embed=tuple(range(width)))) == fixed

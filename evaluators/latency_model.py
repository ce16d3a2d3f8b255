"""A latency model of pruned ViTs on one device, batch size and dtype: for latency budgets, the
decoder needs a policy's latency in microseconds, not the seconds a measurement takes.

The model is a sum over blocks of sub-layer latencies plus a fixed part (patch embedding, norms,
classifier). Each sub-layer kind is a least-squares fit, linear in its MAC counts, to latencies
*measured* on a grid of real :class:`AttentionLayer` / :class:`MlpLayer` modules at aligned widths
and several token counts (linear interpolation between grid points, with an intercept for launch
and memory overheads)::

    attention ≈ a0 + a1·qkv_macs + a2·sdpa_macs + a3·proj_macs + a4·[ranks tokens]·N
    mlp       ≈ b0 + b1·macs + b2·activations     (two linears, with or without GELU)
    merged    ≈ c0 + c1·macs                      (one D×D linear)

:func:`fit_latency_model` also measures whole held-out policies and reports the prediction error.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.measure import device_name, latency_side_by_side
from vitprune.evaluators.modules import AttentionLayer, KeepAllTokens, KeepTokens, MlpLayer, PrunedAttention
from vitprune.evaluators.surgery import apply_policy
from vitprune.spaces import Architecture, LayerPolicy, Policy
from vitprune.spaces.builder import aligned_width

log = logging.getLogger(__name__)


def attention_features(base: Architecture, layer: LayerPolicy, tokens_in: int) -> list[float]:
    n = base.num_prefix_tokens + tokens_in
    H, d_qk, d_v, D = layer.num_heads, layer.qk_dim, layer.v_dim, base.embed_dim
    sdpa = 2 * H * n * n * max(d_qk, d_v)  # fused, at the padded width (see PrunedAttention)
    scores = layer.keep_tokens < tokens_in
    return [1.0, n * D * H * (2 * d_qk + d_v), sdpa, n * H * d_v * D, n * scores]


def mlp_features(base: Architecture, layer: LayerPolicy) -> tuple[str, list[float]]:
    n, D, h = base.num_prefix_tokens + layer.keep_tokens, base.embed_dim, layer.mlp_hidden
    form = layer.mlp_form(D)
    if form == "merged":
        return "merged", [1.0, n * D * D]
    return "mlp", [1.0, 2 * n * D * h, n * h * (form == "gelu")]


@dataclass(frozen=True)
class LatencyModel:
    """Predicts the median latency (ms per batch) of a policy's model; see the module docstring."""

    device: str
    batch_size: int
    dtype: str
    fixed_ms: float
    attention: tuple[float, ...]
    mlp: tuple[float, ...]
    merged: tuple[float, ...]
    correction: tuple[float, float] = (0.0, 1.0)  # measured ≈ α + β·raw, fitted on whole models
    holdout_error: float | None = None  # mean |predicted − measured| / measured on held-out policies

    def __call__(self, policy: Policy) -> float:
        return self.predict(policy)

    def predict(self, policy: Policy) -> float:
        alpha, beta = self.correction
        return alpha + beta * self.raw(policy)

    def raw(self, policy: Policy) -> float:
        """The fixed part plus the sub-layer fits, before the whole-model correction."""
        base, total = policy.base, self.fixed_ms
        coefficients = {"mlp": self.mlp, "merged": self.merged}
        for layer, tokens_in in zip(policy.layers, policy.tokens_in, strict=True):
            if layer.attention:
                total += _dot(self.attention, attention_features(base, layer, tokens_in))
            if layer.mlp:
                kind, features = mlp_features(base, layer)
                total += _dot(coefficients[kind], features)
        return total

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        doc = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


def _dot(coefficients: Sequence[float], features: Sequence[float]) -> float:
    return sum(c * f for c, f in zip(coefficients, features, strict=True))


def _time(run: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``run()`` under inference mode, the device synchronised around it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            run()
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def materialize(policy: Policy, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The pruned model of ``policy`` with small random weights (no dense weights needed).

    Weights are drawn, not left uninitialised: garbage memory can hold denormals that slow CPUs.
    """
    model = apply_policy(create_dense(policy.base, device="meta"), policy).to_empty(device=device)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    return model.to(dtype).eval()


def _least_squares(rows: list[list[float]], targets: list[float]) -> tuple[float, ...]:
    a = torch.tensor(rows, dtype=torch.float64)
    scale = a.abs().amax(dim=0).clamp_min(1e-12)  # condition the columns (MACs are ~1e9, the intercept 1)
    solution = torch.linalg.lstsq(a / scale, torch.tensor(targets, dtype=torch.float64).unsqueeze(1)).solution
    return tuple((solution.squeeze(1) / scale).tolist())


def _grid(full: int, align: int) -> list[int]:
    return sorted({aligned_width(r, full, align) for r in (0.125, 0.5, 1.0)})


def fit_latency_model(
    base: Architecture,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    align: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    calibration: Sequence[Policy] = (),
    holdout: Sequence[Policy] = (),
    progress: Callable[[str], None] | None = None,
) -> LatencyModel:
    """Measure sub-layers on a grid, fit the model, and check it on ``holdout`` policies.

    Sub-layers timed alone miss what a whole model adds (dispatch between blocks, caches), so the
    whole models of the ``calibration`` policies are measured and a linear correction
    ``measured ≈ α + β·raw`` is fitted on them; the ``holdout`` policies (distinct ones) then
    measure the error of the corrected model.
    """
    D, P = base.embed_dim, base.num_prefix_tokens
    token_grid = sorted({max(1, round(base.num_patches * r)) for r in (0.25, 0.5, 1.0)})
    dd = {"device": device, "dtype": dtype}

    def tokens_input(n: int) -> Tensor:
        return torch.randn(batch_size, P + n, D, **dd)

    attention_rows, attention_ms = [], []
    for H in sorted({1, max(1, base.num_heads // 2), base.num_heads}):
        for d_qk in _grid(base.head_dim, align):
            for d_v in sorted({d_qk, base.head_dim}):
                for n in token_grid:
                    for keep in sorted({n, max(1, n // 2)}):
                        attn = PrunedAttention(
                            D,
                            num_heads=H,
                            qk_dim=d_qk,
                            v_dim=d_v,
                            scale=base.scale,
                            score_tokens=keep < n,
                            **dd,
                        )
                        tokens = KeepTokens(keep, num_prefix_tokens=P) if keep < n else KeepAllTokens()
                        module = AttentionLayer(
                            norm=nn.LayerNorm(D, **dd),
                            attn=attn,
                            ls=nn.Identity(),
                            drop_path=nn.Identity(),
                            tokens=tokens,
                        ).eval()
                        layer = LayerPolicy(
                            True,
                            tuple(range(H)),
                            (tuple(range(d_qk)),) * H,
                            (tuple(range(d_v)),) * H,
                            True,
                            (),
                            keep,
                        )
                        x = tokens_input(n)
                        attention_rows.append(attention_features(base, layer, n))
                        attention_ms.append(
                            _time(lambda m=module, x=x: m(x, None), device, warmup=warmup, repeats=repeats)
                        )
    if progress:
        progress(f"latency model: {len(attention_ms)} attention shapes measured")

    rows: dict[str, list[list[float]]] = {"mlp": [], "merged": []}
    times: dict[str, list[float]] = {"mlp": [], "merged": []}
    for h in _grid(base.mlp_hidden, align):
        for activation in (True, False):
            for n in token_grid:
                layer = LayerPolicy(False, (), (), (), activation, tuple(range(h)), n)
                kind, features = mlp_features(base, layer)
                if kind == "merged":
                    mlp: nn.Module = nn.Linear(D, D, **dd)
                else:
                    mlp = Mlp(D, hidden_features=h, act_layer=nn.GELU if activation else nn.Identity, **dd)
                module = MlpLayer(
                    norm=nn.LayerNorm(D, **dd), mlp=mlp, ls=nn.Identity(), drop_path=nn.Identity()
                )
                x = tokens_input(n)
                rows[kind].append(features)
                times[kind].append(_time(lambda m=module, x=x: m(x), device, warmup=warmup, repeats=repeats))
    if not rows["merged"]:  # no aligned width above D/2: the merged form never occurs
        rows["merged"], times["merged"] = [[1.0, 0.0]], [0.0]

    empty = Policy(
        base=base,
        layers=tuple(LayerPolicy(False, (), (), (), True, (), base.num_patches) for _ in range(base.depth)),
    )
    skeleton = materialize(empty, device=device, dtype=dtype)
    fixed = latency_side_by_side(
        {"fixed": skeleton}, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )["fixed"].median_ms
    model = LatencyModel(
        device=device_name(device),
        batch_size=batch_size,
        dtype=str(dtype).removeprefix("torch."),
        fixed_ms=fixed,
        attention=_least_squares(attention_rows, attention_ms),
        mlp=_least_squares(rows["mlp"], times["mlp"]),
        merged=_least_squares(rows["merged"], times["merged"]),
    )
    if len(calibration) >= 2:
        raw = [model.raw(policy) for policy in calibration]
        measured = measure_policies(
            calibration, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
        )
        alpha, beta = _least_squares([[1.0, r] for r in raw], measured)
        model = LatencyModel(**{**asdict(model), "correction": (alpha, beta)})
    if holdout:
        errors = holdout_errors(model, holdout, device=device, dtype=dtype, warmup=warmup, repeats=repeats)
        model = LatencyModel(**{**asdict(model), "holdout_error": statistics.mean(errors)})
        if progress:
            progress(
                f"latency model: held-out error mean {statistics.mean(errors):.1%}, max {max(errors):.1%}"
            )
    return model


def holdout_errors(
    model: LatencyModel,
    policies: Sequence[Policy],
    *,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int = 2,
    repeats: int = 5,
) -> list[float]:
    """``|predicted − measured| / measured`` for each policy, measured end to end (random weights)."""
    measured = measure_policies(
        policies, batch_size=model.batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )
    return [abs(model.predict(policy) - ms) / ms for policy, ms in zip(policies, measured, strict=True)]


def measure_policies(
    policies: Sequence[Policy],
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int = 2,
    repeats: int = 5,
) -> list[float]:
    """Median latency (ms) of each policy's whole model, measured side by side (random weights)."""
    models = {str(i): materialize(policy, device=device, dtype=dtype) for i, policy in enumerate(policies)}
    measured = latency_side_by_side(
        models, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )
    return [measured[str(i)].median_ms for i in range(len(policies))]


def sample_policies(
    build: Callable[[dict[str, float]], Policy], names: Sequence[str], count: int, seed: int
) -> list[Policy]:
    """``count`` policies decoded from seeded uniform random points (held-out checks)."""
    rng = random.Random(seed)
    return [build({name: rng.random() for name in names}) for _ in range(count)]

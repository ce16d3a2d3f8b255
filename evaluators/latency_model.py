"""A latency model of pruned ViTs on one device, batch size and dtype: for latency budgets the
decoder needs a policy's latency in microseconds, not the seconds a measurement takes.

Every op of a pruned block has a table of latencies *measured* on a grid of aligned widths and
token counts, interpolated multilinearly between grid points:

- ``expand(n, w)``: ``Linear(D, w)`` on ``n`` tokens — qkv (``w = H·(2·d_qk + d_v)``), fc1, the
  merged ``Linear(D, D)``;
- ``reduce(n, w)``: ``Linear(w, D)`` — proj (``w = H·d_v``), fc2;
- ``sdpa(n, h, d)``: fused attention of ``h`` heads of width ``d`` (the padded ``max(d_qk, d_v)``);
- ``norm(n)``, ``gelu(n, w)``, ``select(n)`` (class-token row, top-k and gather).

A policy's latency is the fixed part (patch embedding, final norm, classifier: measured on the
model with every block removed) plus its ops. What tables miss (residual adds, dispatch between
blocks, caches, memory traffic that grows with the model) is corrected on whole models by a power
law, ``measured ≈ β·(fixed + tables)^γ``, fitted by least squares on logarithms (relative errors)
over a few calibration policies spread from small to dense *and the dense model*, measured in one
interleaved run; held-out policies then measure the error. Not an intercept and a slope: fitted on
policies of similar size, the pair extrapolated badly (DeiT-S, CPU, batch 8: 34 % mean held-out
error). One factor (``γ = 1``) put the dense DeiT-S at 80 % of its measured latency at batch 8,
as the tables miss more of a larger model: a "90 %" budget lay above the dense model as the model
saw it (BENCHMARKS.md, section 4).

The dense model is measured with the calibration policies, not apart: its latency is what a
percentage budget is a share of, and the model must agree with it. Measured a moment later on a
shared machine, the two disagreed by as much as the load moved (the tiny test model's dense
latency measured 2.3 to 10.7 ms under the same load).
"""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.measure import device_name, latency_side_by_side
from vitprune.evaluators.modules import cls_attention
from vitprune.evaluators.surgery import apply_policy
from vitprune.spaces import Architecture, LayerPolicy, Policy
from vitprune.spaces.builder import aligned_width
from vitprune.spaces.shape import Shape


@dataclass(frozen=True)
class Table:
    """Values measured on a grid (``axes``), interpolated multilinearly, clamped at the edges."""

    axes: tuple[tuple[float, ...], ...]
    values: tuple[float, ...]  # row-major over the axes

    def __call__(self, *point: float) -> float:
        return self._interpolate(0, 0, point)

    def _interpolate(self, axis: int, offset: int, point: Sequence[float]) -> float:
        if axis == len(self.axes):
            return self.values[offset]
        grid = self.axes[axis]
        if len(grid) == 1:
            return self._interpolate(axis + 1, offset, point)
        stride = 1
        for later in self.axes[axis + 1 :]:
            stride *= len(later)
        x = min(max(point[axis], grid[0]), grid[-1])
        upper = min(max(bisect.bisect_left(grid, x), 1), len(grid) - 1)
        lower = upper - 1
        t = (x - grid[lower]) / (grid[upper] - grid[lower])
        low = self._interpolate(axis + 1, offset + lower * stride, point)
        high = self._interpolate(axis + 1, offset + upper * stride, point)
        return low + t * (high - low)


@dataclass(frozen=True)
class LatencyModel:
    """Predicts the median latency (ms per batch) of a policy's model; see the module docstring."""

    device: str
    batch_size: int
    dtype: str
    fixed_ms: float
    tables: dict[str, Table]
    correction: tuple[float, float] = (0.0, 1.0)  # measured ≈ α + β·raw^γ; fit_latency_model fits β
    # Tables measured over residual widths too (``expand(n, d, w)``, ``reduce(n, w, d)``,
    # ``norm(n, d)``, ``select(n, d)``, ``fixed(d)``), when the residual width is searched; models
    # saved before that have the two-axis tables of the dense width.
    embed_axis: bool = False
    fixed: Table | None = None
    holdout_error: float | None = None  # mean |predicted − measured| / measured on held-out policies
    holdout_max_error: float | None = None
    # The dense model, measured with the calibration policies (models saved before: None).
    dense_ms: float | None = None
    exponent: float = 1.0  # γ of the correction, fitted with β (models saved before it: 1)

    def __call__(self, policy: Policy) -> float:
        return self.predict(policy)

    def predict(self, policy: Policy) -> float:
        alpha, beta = self.correction
        return alpha + beta * self.raw(policy) ** self.exponent

    def raw(self, policy: Policy | Shape) -> float:
        """The fixed part plus the interpolated op latencies, before the whole-model correction."""
        base, t = policy.base, self.tables
        D = policy.embed_dim
        if self.embed_axis:
            fixed = self.fixed(D) if self.fixed is not None else self.fixed_ms

            def expand(n: int, w: int) -> float:
                return t["expand"](n, D, w)

            def reduce(n: int, w: int) -> float:
                return t["reduce"](n, w, D)

            def norm(n: int) -> float:
                return t["norm"](n, D)

            def select(n: int) -> float:
                return t["select"](n, D)
        else:
            fixed, expand, reduce, norm, select = (
                self.fixed_ms,
                t["expand"],
                t["reduce"],
                t["norm"],
                t["select"],
            )
        total = fixed
        for layer, tokens_in in zip(policy.layers, policy.tokens_in, strict=True):
            n_in = base.num_prefix_tokens + tokens_in
            n_out = base.num_prefix_tokens + layer.keep_tokens
            if layer.attention:
                H, d_qk, d_v = layer.num_heads, layer.qk_dim, layer.v_dim
                total += norm(n_in) + expand(n_in, H * (2 * d_qk + d_v))
                total += t["sdpa"](n_in, H, max(d_qk, d_v)) + reduce(n_in, H * d_v)
                if layer.keep_tokens < tokens_in:
                    total += select(n_in)
            form = layer.mlp_form(D)
            if form == "merged":
                total += norm(n_out) + expand(n_out, D)
            elif form != "removed":
                h = layer.mlp_hidden
                total += norm(n_out) + expand(n_out, h) + reduce(n_out, h)
                if form == "gelu":
                    total += t["gelu"](n_out, h)
        return total

    def to_json(self) -> str:
        doc = asdict(self)
        doc["tables"] = {
            name: {"axes": table.axes, "values": table.values} for name, table in self.tables.items()
        }
        doc["fixed"] = None if self.fixed is None else {"axes": self.fixed.axes, "values": self.fixed.values}
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        doc = json.loads(text)

        def table(data: dict[str, Any]) -> Table:
            return Table(axes=tuple(tuple(axis) for axis in data["axes"]), values=tuple(data["values"]))

        doc["tables"] = {name: table(data) for name, data in doc["tables"].items()}
        doc["fixed"] = None if doc.get("fixed") is None else table(doc["fixed"])
        doc["correction"] = tuple(doc["correction"])
        return cls(**doc)


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


def embed_grid(full: int, align: int) -> tuple[int, ...]:
    """Residual widths the tables are measured at when the residual width is searched."""
    return tuple(sorted({aligned_width(r, full, align) for r in (0.125, 0.25, 0.5, 0.75, 1.0)}))


def _grid(full: int, align: int, *, also: Sequence[int] = ()) -> tuple[int, ...]:
    """Aligned widths from ``align`` to ``full``: denser where GEMMs change regime (small widths)."""
    ratios = (0.0, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1.0)
    widths = {aligned_width(r, full, align) for r in ratios} | {w for w in also if 0 < w <= full}
    return tuple(sorted(widths))


def measure_tables(
    base: Architecture,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    align: int,
    warmup: int,
    repeats: int,
    embed_widths: Sequence[int] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Table]:
    """Measure every op table of ``base`` on its grid (over the residual ``embed_widths`` too:
    default, the dense width only); ``on_step(done, total)`` after each op."""
    B, H = batch_size, base.num_heads
    embeds = tuple(sorted(set(embed_widths or (base.embed_dim,))))
    D = base.embed_dim
    prefix, patches = base.num_prefix_tokens, base.num_patches
    tokens = tuple(sorted({prefix + max(1, round(patches * r)) for r in (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)}))
    widest = max(3 * base.attn_dim, base.mlp_hidden, D)
    expand_widths = _grid(widest, align, also=(D, base.attn_dim, base.mlp_hidden, 3 * base.attn_dim))
    reduce_widths = _grid(max(base.attn_dim, base.mlp_hidden), align, also=(base.attn_dim, base.mlp_hidden))
    heads = tuple(sorted({1, max(1, H // 2), H}))
    dims = _grid(base.head_dim, align)
    dd = {"device": device, "dtype": dtype}
    total = len(tokens) * (
        len(embeds) * (len(expand_widths) + len(reduce_widths) + 2)
        + len(reduce_widths)
        + len(heads) * len(dims)
    )
    done = 0

    def timed(run: Callable[[], object]) -> float:
        nonlocal done
        value = _time(run, device, warmup=warmup, repeats=repeats)
        done += 1
        if on_step is not None:
            on_step(done, total)
        return value

    def x(n: int, width: int) -> torch.Tensor:
        return torch.randn(B, n, width, **dd)

    expand, reduce, gelu = [], [], []
    for n in tokens:
        for e in embeds:
            for w in expand_widths:
                linear, inputs = nn.Linear(e, w, **dd), x(n, e)
                expand.append(timed(lambda m=linear, i=inputs: m(i)))
        for w in reduce_widths:
            inputs = x(n, w)
            for e in embeds:
                linear = nn.Linear(w, e, **dd)
                reduce.append(timed(lambda m=linear, i=inputs: m(i)))
            gelu.append(timed(lambda i=inputs: F.gelu(i)))
    sdpa = []
    for n in tokens:
        for h in heads:
            for d in dims:
                q = torch.randn(B, h, n, d, **dd)
                sdpa.append(timed(lambda q=q: F.scaled_dot_product_attention(q, q, q, scale=base.scale)))
    norm, select = [], []
    for n in tokens:
        q = torch.randn(B, H, n, base.head_dim, **dd)
        keep = max(1, (n - prefix) // 2)
        for e in embeds:
            layer_norm, inputs = nn.LayerNorm(e, **dd), x(n, e)
            norm.append(timed(lambda m=layer_norm, i=inputs: m(i)))

            def choose(q=q, i=inputs, keep=keep, e=e) -> torch.Tensor:
                index = cls_attention(q, q, base.scale)[:, prefix:].topk(keep, dim=1).indices + prefix
                return i.gather(1, index.unsqueeze(-1).expand(-1, -1, e))

            select.append(timed(choose))
    return {
        "expand": Table((tokens, embeds, expand_widths), tuple(expand)),
        "reduce": Table((tokens, reduce_widths, embeds), tuple(reduce)),
        "gelu": Table((tokens, reduce_widths), tuple(gelu)),
        "sdpa": Table((tokens, heads, dims), tuple(sdpa)),
        "norm": Table((tokens, embeds), tuple(norm)),
        "select": Table((tokens, embeds), tuple(select)),
    }


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
    on_step: Callable[[int, int], None] | None = None,
    embed: bool = False,
) -> LatencyModel:
    """Measure the op tables, measure the dense model side by side with the ``calibration``
    policies and fit the whole-model power law on all of them, and measure the error on
    ``holdout`` policies (distinct ones). ``on_step(done, total)`` follows the
    op measurements. With ``embed`` (the residual width is searched), the tables and the fixed part
    are measured over residual widths too."""
    widths = embed_grid(base.embed_dim, align) if embed else (base.embed_dim,)
    tables = measure_tables(
        base,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        align=align,
        warmup=warmup,
        repeats=repeats,
        embed_widths=widths,
        on_step=on_step,
    )
    no_blocks = tuple(LayerPolicy(False, (), (), (), True, (), base.num_patches) for _ in range(base.depth))
    empties = [Policy(base=base, layers=no_blocks, embed=tuple(range(width))) for width in widths]
    fixed = measure_policies(
        empties, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )
    model = LatencyModel(
        device=device_name(device),
        batch_size=batch_size,
        dtype=str(dtype).removeprefix("torch."),
        fixed_ms=fixed[-1],
        tables=tables,
        embed_axis=len(tables["expand"].axes) == 3,
        fixed=Table((tuple(widths),), tuple(fixed)),
    )
    anchored = [Policy.keep_all(base), *calibration]
    measured = measure_policies(
        anchored, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )
    model = replace(model, dense_ms=measured[0])
    if len(calibration) >= 2:
        beta, gamma = power_law(model, anchored, measured)
        model = replace(model, correction=(0.0, beta), exponent=gamma)
    if holdout:
        errors = holdout_errors(model, holdout, device=device, dtype=dtype, warmup=warmup, repeats=repeats)
        model = replace(model, holdout_error=statistics.mean(errors), holdout_max_error=max(errors))
        if progress:
            progress(
                f"latency model: held-out error mean {statistics.mean(errors):.1%}, max {max(errors):.1%}"
            )
    return model


def power_law(
    model: LatencyModel, policies: Sequence[Policy], measured: Sequence[float]
) -> tuple[float, float]:
    """``(β, γ)`` of ``measured ≈ β·raw^γ`` over ``policies``: least squares on ``log measured =
    log β + γ·log raw``, so each policy's *relative* error counts alike. One factor (``γ = 1``)
    when the policies do not differ in raw latency, or when larger ones measured faster (``γ ≤ 0``:
    a model the projection could not use, since a cheaper policy must cost less)."""
    xs = [math.log(model.raw(policy)) for policy in policies]
    ys = [math.log(ms) for ms in measured]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    gamma = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / max(spread, 1e-300)
    if spread < 1e-12 or gamma <= 0:
        return relative_factor(model, policies, measured), 1.0
    return math.exp(mean_y - gamma * mean_x), gamma


def relative_factor(model: LatencyModel, policies: Sequence[Policy], measured: Sequence[float]) -> float:
    """The factor ``β`` minimising ``Σ (β·raw − measured)² / measured²`` over ``policies``: the
    squared *relative* error, the figure held-out policies report."""
    ratios = [model.raw(policy) / ms for policy, ms in zip(policies, measured, strict=True)]
    return sum(ratios) / sum(r * r for r in ratios)


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


# Dense-MACs fractions that calibration and held-out policies are spread over, in turn.
SPREAD = (0.25, 0.4, 0.55, 0.7, 0.85)


def sample_policies(
    build: Callable[[dict[str, float], float], Policy],
    names: Sequence[str],
    count: int,
    seed: int,
    fractions: Sequence[float] = SPREAD,
) -> list[Policy]:
    """``count`` policies ``build(point, fraction)`` from seeded uniform random points, the
    fractions of dense MACs taken in turn: a latency model must hold from small models to dense."""
    rng = random.Random(seed)
    return [
        build({name: rng.random() for name in names}, fractions[i % len(fractions)]) for i in range(count)
    ]

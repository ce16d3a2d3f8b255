"""Weight-magnitude baselines: ``magnitude`` (L1 or L2 norms of the weights a unit owns) and
``random`` (seeded uniform scores), against which the papers' criteria are compared."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from vitprune.evaluators.criteria import register_criterion
from vitprune.evaluators.criteria.capture import nested
from vitprune.evaluators.criteria.stream import coupled, mean_normalised, per_channel
from vitprune.evaluators.criteria.weights import BlockWeights
from vitprune.spaces import Architecture, InputError, Scores


@register_criterion("magnitude", scores=("heads", "qk", "v", "mlp", "depth", "embed"))
def magnitude(model: nn.Module, *, base: Architecture, data: Any = None, p: Literal[1, 2] = 1) -> Scores:
    """Scores from weight norms (``p`` = 1 or 2), products along each unit's path:

    - q/k dim ``d`` of head ``h``: ``‖W_q[h,d]‖·‖W_k[h,d]‖`` (its scale in the attention logits);
    - v dim: ``‖W_v[h,d]‖·‖W_proj[:,h,d]‖``; head: the sum of its v-dim scores;
    - MLP neuron ``n``: ``‖W_fc1[n]‖·‖W_fc2[:,n]‖``;
    - attention layer: ``Σ_h ‖W_proj,h · W_v,h‖`` (the size of its residual update map);
      activation layer: the sum of its neuron scores;
    - residual channel ``c``: the norm of its slice of every coupled tensor (patch embedding,
      tokens, norms, LayerScale, qkv/fc1 inputs, proj/fc2 outputs, classifier inputs), each
      tensor's scores divided by their mean, averaged over the tensors.
    """
    if p not in (1, 2):
        raise InputError(f"criterion magnitude: p must be 1 or 2, got {p}")
    heads, qk, v, mlp, attn_layers, act_layers = [], [], [], [], [], []
    for block in model.blocks:
        w = BlockWeights.of(block)
        qk_scores = w.q.norm(p=p, dim=-1) * w.k.norm(p=p, dim=-1)  # (H, hd)
        v_scores = w.v.norm(p=p, dim=-1) * w.proj.norm(p=p, dim=0)  # (H, hd)
        neuron_scores = w.fc1.norm(p=p, dim=1) * w.fc2.norm(p=p, dim=0)
        update = torch.einsum("dhe,hei->hdi", w.proj, w.v)  # per head W_proj,h · W_v,h: (H, D, D)
        qk.append(nested(qk_scores))
        v.append(nested(v_scores))
        heads.append(nested(v_scores.sum(dim=1)))
        mlp.append(nested(neuron_scores))
        attn_layers.append(float(update.flatten(1).norm(p=p, dim=1).sum()))
        act_layers.append(float(neuron_scores.sum()))
    return Scores(
        criterion=f"magnitude-l{p}",
        heads=tuple(heads),
        qk=tuple(qk),
        v=tuple(v),
        mlp=tuple(mlp),
        attn_layers=tuple(attn_layers),
        act_layers=tuple(act_layers),
        embed=nested(mean_normalised([per_channel(t, axis, f"l{p}") for t, axis in coupled(model)])),
    ).check(base)


@register_criterion("random", scores=("heads", "qk", "v", "mlp", "depth", "embed"))
def random_scores(model: nn.Module, *, base: Architecture, data: Any = None, seed: int = 0) -> Scores:
    """Uniform random scores (seeded): the baseline every criterion must beat."""
    g = torch.Generator().manual_seed(seed)
    L, H, hd = base.depth, base.num_heads, base.head_dim

    def rand(*shape: int) -> Any:
        return nested(torch.rand(*shape, generator=g, dtype=torch.float64))

    return Scores(
        criterion=f"random-{seed}",
        heads=rand(L, H),
        qk=rand(L, H, hd),
        v=rand(L, H, hd),
        mlp=rand(L, base.mlp_hidden),
        attn_layers=rand(L),
        act_layers=rand(L),
        embed=rand(base.embed_dim),
    )

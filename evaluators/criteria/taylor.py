"""First-order Taylor importance (Molchanov et al., "Importance Estimation for Neural Network
Pruning", CVPR 2019): the loss change predicted by the gradient when a unit is switched off.

Each unit gets a virtual gate ``m`` multiplying its output (``m = 1`` in the dense model, ``m = 0``
when pruned). To first order, removing it changes the loss by ``∂L/∂m`` at ``m = 1``, which equals
``Σ a·∂L/∂a`` over the activations ``a`` the gate multiplies. No gate is inserted: the products are
read from the activations and their gradients, captured with forward hooks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitprune.evaluators.criteria import register_criterion
from vitprune.evaluators.criteria.capture import (
    evaluating,
    forward_hooked,
    nested,
    require_classifier,
    require_data,
)
from vitprune.evaluators.criteria.stream import coupled, per_channel
from vitprune.spaces import Architecture, Scores


def gate_gradients(
    model: nn.Module, images: Tensor, labels: Tensor
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per-image ``Σ_t a·∂L/∂a`` of every block's ``qkv`` output, ``proj`` input and GELU output.

    ``L`` is the summed cross-entropy of the batch, so the gradient of image ``b``'s activations is
    that of its own loss. Returns three per-layer lists of ``(B, width)`` float64 tensors.
    """
    captured: dict[str, list[Tensor]] = {"qkv": [], "heads": [], "mlp": []}
    with torch.inference_mode(False), torch.enable_grad():
        # An input that requires grad puts every activation in the graph, even with frozen weights.
        logits = forward_hooked(
            model,
            images.detach().clone().requires_grad_(True),
            on_qkv=lambda _, t: captured["qkv"].append(t),
            on_heads=lambda _, t: captured["heads"].append(t),
            on_mlp=lambda _, t: captured["mlp"].append(t),
        )
        loss = F.cross_entropy(logits, labels, reduction="sum")
        tensors = captured["qkv"] + captured["heads"] + captured["mlp"]
        grads = torch.autograd.grad(loss, tensors)
    gates = [(t.detach() * g).double().sum(dim=1) for t, g in zip(tensors, grads, strict=True)]
    L = len(captured["qkv"])
    return gates[:L], gates[L : 2 * L], gates[2 * L :]


def stream_gate_gradients(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """``(D,)``: for each residual channel ``c``, ``Σ w·∂L/∂w`` over every weight coupled to ``c``
    (see :mod:`vitprune.evaluators.criteria.stream`): the first-order loss change of removing the
    channel everywhere, for one batch (``L`` its summed cross-entropy)."""
    tensors = list(coupled(model))
    with torch.inference_mode(False), torch.enable_grad():
        weights = [t for t, _ in tensors]
        flags = [w.requires_grad for w in weights]
        for w in weights:
            w.requires_grad_(True)
        try:
            loss = F.cross_entropy(model(images), labels, reduction="sum")
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
        finally:
            for w, flag in zip(weights, flags, strict=True):
                w.requires_grad_(flag)
    total = torch.zeros(model.embed_dim, dtype=torch.float64)
    for (weight, axis), grad in zip(tensors, grads, strict=True):
        if grad is not None:
            total += per_channel(weight.detach() * grad, axis, "sum")
    return total


@register_criterion("taylor", scores=("heads", "qk", "v", "mlp", "embed"))
def taylor(model: nn.Module, *, base: Architecture, data: Any = None) -> Scores:
    """Head, q/k-dim, v-dim and MLP-neuron scores ``mean_b |∂L_b/∂m|`` over calibration images.

    ``L_b`` is the cross-entropy of image ``b`` to its label: the gradient of a KL to the dense
    model's own predictions vanishes at the dense model, so first-order scores need the task loss.
    Per image (sums over its tokens ``t``):

    - MLP neuron ``n``: ``g = Σ_t a_tn·∂L/∂a_tn`` with ``a`` the GELU output;
    - v dim ``(h, d)``: the same on the attention output ``o_t,h,d`` (the input of ``proj``);
    - head ``h``: the sum of its v-dim ``g`` (one gate on the whole head output), before the
      absolute value;
    - q/k dim ``(h, d)``: one gate on ``q_{:,h,d}`` and ``k_{:,h,d}`` together (they are pruned
      jointly): ``g = Σ_t (q_thd·∂L/∂q_thd + k_thd·∂L/∂k_thd)``;
    - residual channel ``c``: ``|Σ w·∂L/∂w|`` over every weight coupled to it, per batch
      (:func:`stream_gate_gradients`), averaged over images.

    Absolute values are taken per image and then averaged, so that opposite signs in different
    images do not cancel. The model's parameters get no ``.grad``.
    """
    require_classifier("taylor", base)
    batches = require_data("taylor", data)
    L, H, hd = base.depth, base.num_heads, base.head_dim
    heads = torch.zeros(L, H, dtype=torch.float64)
    qk = torch.zeros(L, H, hd, dtype=torch.float64)
    v = torch.zeros(L, H, hd, dtype=torch.float64)
    mlp = torch.zeros(L, base.mlp_hidden, dtype=torch.float64)
    embed = torch.zeros(base.embed_dim, dtype=torch.float64)
    count = 0
    with evaluating(model):
        for images, labels in batches:
            qkv_gates, v_gates, mlp_gates = gate_gradients(model, images, labels)
            for layer in range(L):
                q_gate, k_gate, _ = qkv_gates[layer].unflatten(-1, (3, H, hd)).unbind(1)  # (B, H, hd)
                v_gate = v_gates[layer].unflatten(-1, (H, hd))
                qk[layer] += (q_gate + k_gate).abs().sum(0)
                v[layer] += v_gate.abs().sum(0)
                heads[layer] += v_gate.sum(-1).abs().sum(0)
                mlp[layer] += mlp_gates[layer].abs().sum(0)
            embed += stream_gate_gradients(model, images, labels).abs()
            count += images.shape[0]
    return Scores(
        criterion="taylor",
        heads=nested(heads / count),
        qk=nested(qk / count),
        v=nested(v / count),
        mlp=nested(mlp / count),
        embed=nested(embed / count),
    ).check(base)

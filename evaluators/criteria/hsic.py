"""HSIC dependence (Hou & Kung, "Multi-Dimensional Model Compression of Vision Transformer"):
a unit matters as much as its output statistically depends on the model's predictions.

Dependence is the normalised Hilbert–Schmidt independence criterion (kernel alignment of centred
Gram matrices, as in CKA), estimated over the calibration images. Heads are ranked by relevance
minus redundancy with the heads already chosen in their layer (greedy, as in mRMR); MLP neurons by
relevance alone (hundreds to thousands per layer: pairwise redundancy would cost ``O(hidden²)``).

Details of the paper that could not be confirmed (only its abstract was available): the kernels,
the exact redundancy term and the subsampling. The choices below are documented where they are made.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from vitprune.evaluators.criteria import register_criterion
from vitprune.evaluators.criteria.capture import (
    evaluating,
    forward_hooked,
    nested,
    require_data,
    sample_tokens,
    take_images,
)
from vitprune.evaluators.criteria.weights import BlockWeights
from vitprune.spaces import Architecture, InputError, Scores

Kernel = Literal["gaussian", "linear"]

# Normalised HSIC is scale-free: a unit whose output varies by less than this fraction of its
# layer's most variable unit (rounding noise around a constant) counts as constant, i.e. nHSIC 0.
_CONSTANT_RTOL = 1e-6


def gram(x: Tensor, *, kernel: Kernel = "gaussian") -> Tensor:
    """Gram matrices of ``x`` ``(..., n, f)``: ``(..., n, n)``.

    Gaussian: ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))`` with ``σ²`` the median squared distance over
    pairs ``i < j`` (the median heuristic; the mean where the median is 0). Linear: ``K = x·xᵀ``.
    """
    x = x.double()
    if kernel == "linear":
        return x @ x.mT
    d2 = torch.cdist(x, x).square()
    n = x.shape[-2]
    upper = torch.triu_indices(n, n, 1)
    pairs = d2[..., upper[0], upper[1]]
    bandwidth = pairs.median(dim=-1).values
    bandwidth = torch.where(bandwidth > 0, bandwidth, pairs.mean(dim=-1))
    bandwidth = torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))  # constant x: K = 1
    return torch.exp(-d2 / (2 * bandwidth[..., None, None]))


def centred(k: Tensor) -> Tensor:
    """``H·K·H`` with ``H = I − 11ᵀ/n``, for a batch of Gram matrices ``(..., n, n)``."""
    return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)


def normalised_hsic(kc: Tensor, lc: Tensor) -> Tensor:
    """``nHSIC(K, L) = ⟨K̃, L̃⟩_F / (‖K̃‖_F ‖L̃‖_F)`` for centred Gram matrices ``K̃, L̃`` ``(..., n, n)``.

    In ``[0, 1]`` for positive semi-definite kernels; 1 for identical Gram matrices; 0 where either
    side is constant. With linear kernels on 1-d features it is the squared Pearson correlation.
    """
    kn = kc.flatten(-2).norm(dim=-1)
    ln = lc.flatten(-2).norm(dim=-1)
    inner = (kc * lc).flatten(-2).sum(dim=-1)
    denom = kn * ln
    return torch.where(denom > 0, inner / denom.clamp_min(1e-300), torch.zeros_like(inner))


def dependence(features: Tensor, target_centred: Tensor, *, kernel: Kernel, chunk: int = 256) -> Tensor:
    """nHSIC of each unit's features ``(U, n, f)`` with a fixed centred target Gram ``(n, n)``: ``(U,)``.

    Chunked over units so that at most ``chunk`` Gram matrices exist at once. Units that are
    constant up to rounding (spread below ``_CONSTANT_RTOL`` of the most variable unit) score 0.
    """
    spread = (features - features.mean(dim=1, keepdim=True)).double().square().sum(dim=(1, 2))
    out = torch.cat(
        [
            normalised_hsic(centred(gram(part, kernel=kernel)), target_centred)
            for part in features.split(chunk)
        ]
    )
    return torch.where(spread > _CONSTANT_RTOL**2 * spread.max(), out, torch.zeros_like(out))


def mrmr_order(relevance: Tensor, redundancy: Tensor) -> list[int]:
    """Greedy max-relevance min-redundancy order of ``U`` units.

    Step ``t`` picks ``argmax_u r_u · (1 − max_{s ∈ S_t} R_us)`` over the units not yet picked,
    ``S_t`` the units picked before: the part of a unit's relevance that is not already covered by
    a chosen unit (a duplicate of a chosen unit gains 0). Ties go to the lower index.

    Args:
        relevance: ``(U,)`` nHSIC with the predictions.
        redundancy: ``(U, U)`` pairwise nHSIC between units.
    """
    remaining = list(range(len(relevance)))
    order: list[int] = []
    covered = torch.zeros_like(relevance)
    while remaining:
        gains = relevance[remaining] * (1 - covered[remaining])
        pick = remaining.pop(int(gains.argmax()))
        order.append(pick)
        covered = torch.maximum(covered, redundancy[:, pick])
    return order


@register_criterion("hsic", scores=("heads", "mlp"))
def hsic(
    model: nn.Module,
    *,
    base: Architecture,
    data: Any = None,
    kernel: Kernel = "gaussian",
    max_images: int = 128,
    num_tokens: int = 8,
    seed: int = 0,
) -> Scores:
    """Head and MLP-neuron scores from their statistical dependence with the predictions.

    Samples are the first ``max_images`` calibration images. Each unit's feature for an image is
    its contribution to the residual stream at ``num_tokens`` token positions (drawn once with
    ``seed``, the class token always included, the same for every image), concatenated:

    - head ``h``: its contribution ``c_h = o_h · W_proj,hᵀ`` where ``o_h`` ``(T, hd)`` is the head's
      attention output and ``W_proj,h`` ``(D, hd)`` its columns of ``proj``; stored as
      ``o_h · R_hᵀ`` with ``W_proj,h = Q_h·R_h`` (QR), which has the same inner products and
      distances as ``c_h`` with ``hd`` instead of ``D`` numbers per token: a ``(T·hd)`` vector;
    - neuron ``n``: ``GELU(fc1_n(x)) · ‖W_fc2[:, n]‖``: a ``(T,)`` vector (the norm only makes a
      neuron with a zero output column constant; nHSIC is otherwise scale-free).

    The target is the model's softmax output ``(n, classes)`` (its pooled features when it has no
    classifier): dependence on the dense model's own predictions, so no labels are needed.
    With Gram matrices ``K_u`` (``kernel``) and ``L`` of the target, relevance is
    ``r_u = nHSIC(K_u, L)`` (:func:`normalised_hsic`), and

    - ``heads[l][h]`` = ``1 − rank/H``, ``rank`` the position of head ``h`` in the
      :func:`mrmr_order` of its layer with redundancy ``R_hh' = nHSIC(K_h, K_h')`` (1 for the head
      chosen first; the score is ordinal);
    - ``mlp[l][n]`` = ``r_n``.

    Args:
        kernel: ``"gaussian"`` (median-heuristic bandwidth) or ``"linear"`` (linear CKA).
        max_images: images used (Gram matrices are ``n × n``).
        num_tokens: token positions sampled per image.
        seed: seed of the token sample.
    """
    if kernel not in ("gaussian", "linear"):
        raise InputError(f"criterion hsic: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    batches = require_data("hsic", data)
    positions = sample_tokens(
        base.num_patches + base.num_prefix_tokens, num_tokens, first=int(base.class_token), seed=seed
    )
    weights = [BlockWeights.of(block) for block in model.blocks]
    fc2_norms = [w.fc2.norm(dim=0) for w in weights]
    isometries = [torch.linalg.qr(w.proj.permute(1, 0, 2)).R for w in weights]  # (H, hd, hd)
    heads: list[list[Tensor]] = [[] for _ in weights]
    neurons: list[list[Tensor]] = [[] for _ in weights]
    targets = []

    def on_heads(layer: int, out: Tensor) -> None:
        o = out[:, positions].unflatten(-1, (base.num_heads, base.head_dim))  # (B, T, H, hd)
        c = torch.einsum("bthe,hfe->hbtf", o.float(), isometries[layer])  # (H, B, T, hd)
        heads[layer].append(c.flatten(2))

    def on_mlp(layer: int, act: Tensor) -> None:
        a = act[:, positions].float() * fc2_norms[layer]  # (B, T, hidden)
        neurons[layer].append(a.permute(2, 0, 1))  # (hidden, B, T)

    with torch.inference_mode(), evaluating(model):
        for images, _ in take_images(batches, max_images):
            out = forward_hooked(model, images, on_heads=on_heads, on_mlp=on_mlp).float()
            targets.append(out.softmax(-1) if base.num_classes else out)
    target = centred(gram(torch.cat(targets)[None], kernel=kernel))[0]
    if target.shape[0] < 2:
        raise InputError("criterion hsic: needs at least 2 calibration images")

    head_scores, mlp_scores = [], []
    for layer_heads, layer_neurons in zip(heads, neurons, strict=True):
        features = torch.cat(layer_heads, dim=1)  # (H, n, T·hd)
        relevance = dependence(features, target, kernel=kernel)
        grams = centred(gram(features, kernel=kernel)).flatten(1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-300)
        order = mrmr_order(relevance, (grams @ grams.T).clamp(0, 1))
        rank = torch.empty(base.num_heads, dtype=torch.float64)
        rank[order] = torch.arange(base.num_heads, dtype=torch.float64)
        head_scores.append(nested(1 - rank / base.num_heads))
        mlp_scores.append(nested(dependence(torch.cat(layer_neurons, dim=1), target, kernel=kernel)))
    return Scores(criterion=f"hsic-{kernel}", heads=tuple(head_scores), mlp=tuple(mlp_scores)).check(base)

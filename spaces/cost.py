"""Analytic MACs and parameter counts of a policy: exact, from the policy alone, in microseconds.

MACs are per image (batch 1) and count every multiply-accumulate that ``FlopCounterMode`` counts
(it reports FLOPs = 2 × MACs): the patch-embedding convolution, every linear layer, both attention
matmuls at the layer's token count, the class-token attention row that ranks tokens where a layer
prunes them, and the classifier(s). Norms, softmax, GELU and additions are not MACs.

The two attention matmuls run at ``max(d_qk, d_v)``: fused attention kernels need equal q/k and v
widths, so the pruned model zero-pads the narrower ones (exactly) rather than fall back to the
slow math kernel; the cost model counts what runs.

Per layer, with ``N`` tokens entering (prefix included), ``N'`` leaving, ``H`` kept heads of
``d_qk`` / ``d_v`` dims, ``h`` kept MLP neurons and ``D`` the kept residual width (``embed``)::

    attention = N·D·H(2·d_qk + d_v) + 2·H·N²·max(d_qk, d_v) + N·H·d_v·D  [+ H·N·d_qk if N' < N]
    mlp       = 2·N'·D·h      (gelu or linear form)
              = N'·D²         (merged form, used when h > D/2 and the activation is removed)

>>> macs(Policy.keep_all(base))    # doctest: +SKIP
4607543808
"""

from __future__ import annotations

from dataclasses import dataclass

from vitprune.spaces.policy import Architecture, LayerPolicy, Policy
from vitprune.spaces.shape import LayerShape, Shape


@dataclass(frozen=True)
class LayerCost:
    """MACs and parameters of one block, split by sub-layer."""

    attention_macs: int
    mlp_macs: int
    attention_params: int
    mlp_params: int
    tokens_in: int
    tokens_out: int

    @property
    def macs(self) -> int:
        return self.attention_macs + self.mlp_macs

    @property
    def params(self) -> int:
        return self.attention_params + self.mlp_params


@dataclass(frozen=True)
class Cost:
    """MACs and parameters of a whole pruned model, with the per-layer breakdown."""

    embed_macs: int
    head_macs: int
    embed_params: int
    head_params: int
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return self.embed_macs + self.head_macs + sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return self.embed_params + self.head_params + sum(layer.params for layer in self.layers)

    def to_dict(self) -> dict[str, object]:
        return {
            "macs": self.macs,
            "params": self.params,
            "embed": {"macs": self.embed_macs, "params": self.embed_params},
            "head": {"macs": self.head_macs, "params": self.head_params},
            "layers": [
                {
                    "macs": layer.macs,
                    "params": layer.params,
                    "attention_macs": layer.attention_macs,
                    "mlp_macs": layer.mlp_macs,
                    "tokens_in": layer.tokens_in,
                    "tokens_out": layer.tokens_out,
                }
                for layer in self.layers
            ],
        }


def _norm_params(base: Architecture, width: int) -> int:
    return width * (2 if base.norm_bias else 1)


def layer_cost(
    base: Architecture, layer: LayerPolicy | LayerShape, *, tokens_in: int, embed_dim: int | None = None
) -> LayerCost:
    """Cost of one block given the patch tokens entering it and the residual width ``embed_dim``
    (default: the dense one)."""
    D = base.embed_dim if embed_dim is None else embed_dim
    n_in = base.num_prefix_tokens + tokens_in
    n_out = base.num_prefix_tokens + layer.keep_tokens
    layer_scale = D if base.layer_scale else 0

    attention_macs = attention_params = 0
    if layer.attention:
        H, d_qk, d_v = layer.num_heads, layer.qk_dim, layer.v_dim
        qkv_width = H * (2 * d_qk + d_v)
        sdpa = 2 * H * n_in * n_in * max(d_qk, d_v)  # both matmuls at the padded width (see PrunedAttention)
        attention_macs = n_in * D * qkv_width + sdpa + n_in * H * d_v * D
        if layer.keep_tokens < tokens_in:
            attention_macs += H * n_in * d_qk  # the class-token row that ranks the tokens
        attention_params = (
            _norm_params(base, D)
            + D * qkv_width
            + (qkv_width if base.qkv_bias else 0)
            + H * d_v * D
            + (D if base.proj_bias else 0)
            + layer_scale
        )

    mlp_macs = mlp_params = 0
    form = layer.mlp_form(D)
    h = layer.mlp_hidden
    if form == "merged":
        mlp_macs = n_out * D * D
        mlp_params = D * D + (D if base.mlp_bias else 0)
    elif form in ("gelu", "linear"):
        mlp_macs = 2 * n_out * D * h
        mlp_params = 2 * D * h + ((h + D) if base.mlp_bias else 0)
    if form != "removed":
        mlp_params += _norm_params(base, D) + layer_scale

    return LayerCost(
        attention_macs=attention_macs,
        mlp_macs=mlp_macs,
        attention_params=attention_params,
        mlp_params=mlp_params,
        tokens_in=tokens_in,
        tokens_out=layer.keep_tokens,
    )


def cost(policy: Policy | Shape) -> Cost:
    """Per-image MACs and parameters of the model that ``policy`` (or its :class:`Shape`) builds."""
    base = policy.base
    D = policy.embed_dim
    patch_in = base.in_chans * base.patch_size[0] * base.patch_size[1]
    embed_params = (
        D * patch_in
        + (D if base.patch_bias else 0)
        + base.num_prefix_tokens * D
        + base.pos_embed_len * D
        + (_norm_params(base, D) if base.pre_norm else 0)
    )
    head_params = (_norm_params(base, D) if base.final_norm else 0) + base.num_classifiers * (
        D * base.num_classes + base.num_classes
    )
    layers = tuple(
        layer_cost(base, layer, tokens_in=tokens_in, embed_dim=D)
        for layer, tokens_in in zip(policy.layers, policy.tokens_in, strict=True)
    )
    return Cost(
        embed_macs=base.num_patches * D * patch_in,
        head_macs=base.num_classifiers * D * base.num_classes,
        embed_params=embed_params,
        head_params=head_params,
        layers=layers,
    )


def macs(policy: Policy | Shape) -> int:
    """Per-image multiply-accumulates of the pruned model (``FlopCounterMode`` FLOPs / 2)."""
    return cost(policy).macs


def params(policy: Policy | Shape) -> int:
    """Parameters of the pruned model (``sum(p.numel() for p in model.parameters())``)."""
    return cost(policy).params

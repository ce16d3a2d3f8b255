"""Surgery: a policy applied to a dense timm ViT gives a physically smaller model.

Every kept unit becomes rows or columns of new ``nn.Linear`` weights copied from the trained ones;
nothing is masked. One function per structure builds a module with all derived attributes set
together in its constructor (``num_heads``, ``qk_dim``, ``v_dim``, ``attn_dim``, ``scale``).

>>> pruned = apply_policy(dense, policy)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re

import torch
from timm.layers import Attention, LayerScale, Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vitprune.evaluators.describe import check_matches
from vitprune.evaluators.modules import (
    AttentionLayer,
    KeepAllTokens,
    KeepTokens,
    MlpLayer,
    NoAttention,
    PrunedAttention,
    PrunedBlock,
    PrunedBlocks,
)
from vitprune.spaces import Architecture, LayerPolicy, Policy


def _loaded(module: nn.Module, state: dict[str, Tensor | None]) -> nn.Module:
    """``module`` (built on ``meta``) holding copies of ``state``; ``None`` entries are absent biases."""
    module.load_state_dict(
        {key: value.detach().clone() for key, value in state.items() if value is not None},
        strict=True,
        assign=True,
    )
    return module


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight`` and ``bias``, on their device and dtype."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    return _loaded(linear, {"weight": weight, "bias": bias})


def _index(values: list[int], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def qkv_rows(layer: LayerPolicy, *, head_dim: int, attn_dim: int) -> list[int]:
    """Rows of timm's fused ``qkv`` weight (``[q | k | v]``, head-major) that ``layer`` keeps, in the
    ``[q heads | k heads | v heads]`` layout of :class:`PrunedAttention`."""
    q = [h * head_dim + d for h, dims in zip(layer.heads, layer.qk, strict=True) for d in dims]
    k = [attn_dim + row for row in q]
    v = [2 * attn_dim + h * head_dim + d for h, dims in zip(layer.heads, layer.v, strict=True) for d in dims]
    return q + k + v


def prune_attention(
    attn: Attention, layer: LayerPolicy, *, score_tokens: bool, channels: Tensor | None = None
) -> PrunedAttention:
    """The attention that keeps ``layer.heads`` with their ``qk`` / ``v`` dims, reading and writing
    the residual ``channels`` (``None``: all), weights copied."""
    weight = attn.qkv.weight
    rows = _index(qkv_rows(layer, head_dim=attn.head_dim, attn_dim=attn.attn_dim), weight.device)
    v_cols = _index(
        [h * attn.head_dim + d for h, dims in zip(layer.heads, layer.v, strict=True) for d in dims],
        weight.device,
    )
    stream = slice(None) if channels is None else channels
    pruned = PrunedAttention(
        attn.qkv.in_features if channels is None else len(channels),
        num_heads=layer.num_heads,
        qk_dim=layer.qk_dim,
        v_dim=layer.v_dim,
        scale=attn.scale,
        score_tokens=score_tokens,
        qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None,
        attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p,
        device="meta",
        dtype=weight.dtype,
    )
    qkv_bias = attn.qkv.bias
    return _loaded(
        pruned,
        {
            "qkv.weight": weight[rows][:, stream],
            "qkv.bias": None if qkv_bias is None else qkv_bias[rows],
            "proj.weight": attn.proj.weight[stream][:, v_cols],
            "proj.bias": None if attn.proj.bias is None else attn.proj.bias[stream],
        },
    )


def merged_linear(w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> nn.Linear:
    """``x ↦ W2(W1·x + b1) + b2`` as one linear map: ``W = W2·W1``, ``b = W2·b1 + b2``.

    Computed in float64 and cast back, so the merge adds no error beyond the final rounding.
    Shapes: ``w1`` is ``(h, D)``, ``w2`` ``(D_out, h)``; returns ``Linear(D, D_out)``.
    """
    weight = w2.double() @ w1.double()
    bias = None
    if b1 is not None or b2 is not None:
        bias = torch.zeros(w2.shape[0], dtype=torch.float64, device=w2.device)
        if b1 is not None:
            bias = bias + w2.double() @ b1.double()
        if b2 is not None:
            bias = bias + b2.double()
        bias = bias.to(w2.dtype)
    return _linear(weight.to(w2.dtype), bias)


def prune_mlp(mlp: Mlp, layer: LayerPolicy, *, embed_dim: int, channels: Tensor | None = None) -> nn.Module:
    """The MLP that keeps ``layer.mlp`` neurons, reading and writing the residual ``channels``
    (``None``: all ``embed_dim``): a timm ``Mlp`` (with its activation or ``nn.Identity``) or, when
    the activation is removed and that is cheaper, one merged ``Linear``."""
    neurons = _index(list(layer.mlp), mlp.fc1.weight.device)
    stream = slice(None) if channels is None else channels
    state = {
        "fc1.weight": mlp.fc1.weight[neurons][:, stream],
        "fc1.bias": None if mlp.fc1.bias is None else mlp.fc1.bias[neurons],
        "fc2.weight": mlp.fc2.weight[stream][:, neurons],
        "fc2.bias": None if mlp.fc2.bias is None else mlp.fc2.bias[stream],
    }
    form = layer.mlp_form(embed_dim)
    if form == "merged":
        return merged_linear(state["fc1.weight"], state["fc1.bias"], state["fc2.weight"], state["fc2.bias"])
    act = mlp.act if form == "gelu" else nn.Identity()
    pruned = Mlp(
        embed_dim,
        hidden_features=layer.mlp_hidden,
        act_layer=lambda: copy.deepcopy(act),
        bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
        drop=(mlp.drop1.p, mlp.drop2.p),
        device="meta",
        dtype=mlp.fc1.weight.dtype,
    )
    return _loaded(pruned, state)


def prune_block(
    block: Block, layer: LayerPolicy, *, base: Architecture, tokens_in: int, channels: Tensor | None = None
) -> PrunedBlock:
    """The pruned form of one timm ``Block``: kept sub-layers rebuilt, removed ones ``nn.Identity``;
    norms, LayerScale and projections keep the residual ``channels`` (``None``: all)."""
    attn: nn.Module = NoAttention()
    if layer.attention:
        prunes_tokens = layer.keep_tokens < tokens_in
        tokens: nn.Module = KeepAllTokens()
        if prunes_tokens:
            weight = block.attn.qkv.weight
            prior = None
            if layer.token_prior is not None:
                prior = torch.tensor(layer.token_prior, dtype=weight.dtype, device=weight.device)
            tokens = KeepTokens(
                layer.keep_tokens,
                num_prefix_tokens=base.num_prefix_tokens,
                prior=prior,
                fusion=layer.token_fusion,
            )
        attn = AttentionLayer(
            norm=keep_channels(block.norm1, channels),
            attn=prune_attention(block.attn, layer, score_tokens=prunes_tokens, channels=channels),
            ls=keep_channels(block.ls1, channels),
            drop_path=copy.deepcopy(block.drop_path1),
            tokens=tokens,
        )
    mlp: nn.Module = nn.Identity()
    if layer.mlp:
        mlp = MlpLayer(
            norm=keep_channels(block.norm2, channels),
            mlp=prune_mlp(
                block.mlp,
                layer,
                embed_dim=base.embed_dim if channels is None else len(channels),
                channels=channels,
            ),
            ls=keep_channels(block.ls2, channels),
            drop_path=copy.deepcopy(block.drop_path2),
        )
    return PrunedBlock(attn=attn, mlp=mlp)


def apply_policy(model: nn.Module, policy: Policy) -> nn.Module:
    """A pruned copy of the dense timm ViT ``model``; ``model`` itself is left unchanged.

    Works on any device, ``"meta"`` included (then it only builds the structure).

    Raises:
        InputError: ``model`` is not a supported dense timm ViT or does not match ``policy.base``.
    """
    check_matches(model, policy.base)
    channels = None if policy.embed is None else _index(list(policy.embed), model.pos_embed.device)
    blocks = PrunedBlocks(
        *(
            prune_block(block, layer, base=policy.base, tokens_in=tokens_in, channels=channels)
            for block, layer, tokens_in in zip(model.blocks, policy.layers, policy.tokens_in, strict=True)
        )
    )
    # Deep-copy everything but the dense blocks: the memo makes the copy use the pruned ones.
    pruned = copy.deepcopy(model, memo={id(model.blocks): blocks})
    if channels is not None:
        _keep_stream_channels(pruned, channels)
    pruned.train(model.training)
    return pruned


def keep_channels(module: nn.Module, channels: Tensor | None) -> nn.Module:
    """A copy of a per-channel module of the residual stream (a LayerNorm, LayerScale or
    ``nn.Identity``) that keeps only ``channels`` (``None``: all)."""
    pruned = copy.deepcopy(module)
    if channels is None or isinstance(module, nn.Identity):
        return pruned
    if isinstance(module, nn.LayerNorm):
        pruned.normalized_shape = (len(channels),)
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                setattr(pruned, name, nn.Parameter(getattr(module, name).detach()[channels].clone()))
        return pruned
    if isinstance(module, LayerScale):
        pruned.gamma = nn.Parameter(module.gamma.detach()[channels].clone())
        return pruned
    raise TypeError(f"keep_channels: no rule for {type(module).__name__}")


def _keep_stream_channels(model: nn.Module, channels: Tensor) -> None:
    """Prune the residual width outside the blocks of the pruned copy ``model``, in place: the patch
    embedding's output, the prefix tokens and position embedding, the norms before and after the
    blocks, and the classifiers' inputs."""
    width = len(channels)
    proj = model.patch_embed.proj
    conv = nn.Conv2d(
        proj.in_channels,
        width,
        kernel_size=proj.kernel_size,
        stride=proj.stride,
        padding=proj.padding,
        bias=proj.bias is not None,
        device="meta",
        dtype=proj.weight.dtype,
    )
    model.patch_embed.proj = _loaded(
        conv, {"weight": proj.weight[channels], "bias": None if proj.bias is None else proj.bias[channels]}
    )
    for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
        token = getattr(model, name, None)
        if isinstance(token, nn.Parameter):
            setattr(model, name, nn.Parameter(token.detach()[..., channels].clone()))
    for name in ("norm_pre", "norm", "fc_norm"):
        setattr(model, name, keep_channels(getattr(model, name), channels))
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            setattr(model, name, _linear(head.weight[:, channels], head.bias))
    model.embed_dim = model.num_features = model.head_hidden_size = width


# Keys of a keep-all pruned model -> keys of the timm dense model (same tensors, same layout:
# keeping every row in order leaves timm's [q | k | v] head-major qkv layout unchanged).
_DENSE_KEYS = (
    (re.compile(r"^blocks\.(\d+)\.attn\.norm\."), r"blocks.\1.norm1."),
    (re.compile(r"^blocks\.(\d+)\.attn\.attn\."), r"blocks.\1.attn."),
    (re.compile(r"^blocks\.(\d+)\.attn\.ls\."), r"blocks.\1.ls1."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.norm\."), r"blocks.\1.norm2."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.mlp\."), r"blocks.\1.mlp."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.ls\."), r"blocks.\1.ls2."),
)


def dense_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The timm state dict of a model pruned with a keep-all policy (the inverse of the surgery)."""

    def rename(key: str) -> str:
        for pattern, replacement in _DENSE_KEYS:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        return key

    return {rename(key): value for key, value in state.items()}

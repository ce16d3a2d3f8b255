"""The pruning policy: an immutable, versioned, self-contained description of a pruned ViT.

A policy names the dense timm model it prunes (:class:`Architecture`) and, for every block, what
survives (:class:`LayerPolicy`): the attention sub-layer or not, the kept heads, per kept head the
kept query/key dims (the same indices for q and k, so the kept part of every attention score is
preserved exactly) and the kept value dims, the MLP activation or not, the kept MLP neurons, and
how many patch tokens survive.

Token pruning sits between a block's attention and its MLP (as in EViT): ``keep_tokens`` of layer
``l`` is the number of patch tokens that layer ``l``'s MLP and every later layer see, chosen by the
class token's attention in layer ``l``. Prefix tokens (class, distillation, register) are always kept.

>>> policy = Policy.keep_all(base)                  # doctest: +SKIP
>>> Policy.from_json(policy.to_json()) == policy    # doctest: +SKIP
True
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from vitprune.spaces.errors import PolicyError

FORMAT = "vitprune.policy/2"
FORMATS = ("vitprune.policy/1", FORMAT)  # what from_dict reads: /1 has no `embed` (all kept)

MlpForm = Literal["removed", "gelu", "linear", "merged"]


@dataclass(frozen=True)
class Architecture:
    """The dense timm ViT that a policy prunes: enough to rebuild it with timm and to cost it.

    Attributes:
        model: timm model name, e.g. ``"deit_small_patch16_224"``.
        model_args: keyword arguments for ``timm.create_model`` that rebuild the same model
            (image size, class count and any overrides), JSON values only.
        embed_dim: token width ``D``.
        depth: number of blocks.
        num_heads: heads per block in the dense model.
        head_dim: width of one head in the dense model; the attention scale stays ``head_dim**-0.5``.
        mlp_hidden: hidden width of the dense MLP.
        in_chans: image channels.
        patch_size: ``(h, w)`` of one patch.
        grid_size: ``(rows, cols)`` of the patch grid.
        num_prefix_tokens: class + distillation + register tokens in front of the patches.
        class_token: whether token 0 is a class token (needed for token pruning).
        num_classes: classifier outputs (0: no classifier).
        num_classifiers: classifier heads (2 for distilled DeiT).
        global_pool: timm pooling, ``"token"`` or ``"avg"``.
        qkv_bias, proj_bias, mlp_bias, patch_bias, norm_bias: which layers carry biases.
        layer_scale: whether blocks carry LayerScale vectors.
        pos_embed_len: rows of the learned position embedding (0: none).
        pre_norm: whether a norm runs before the blocks (CLIP style).
        final_norm: whether a norm runs after the blocks (before or after pooling).
    """

    model: str
    model_args: dict[str, Any]
    embed_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    in_chans: int
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    num_prefix_tokens: int
    class_token: bool
    num_classes: int
    num_classifiers: int
    global_pool: str
    qkv_bias: bool
    proj_bias: bool
    mlp_bias: bool
    patch_bias: bool
    norm_bias: bool
    layer_scale: bool
    pos_embed_len: int
    pre_norm: bool
    final_norm: bool

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def scale(self) -> float:
        """The attention scale of the dense model, kept by every pruned layer."""
        return self.head_dim**-0.5


def mlp_form(hidden: int, *, activation: bool, embed_dim: int) -> MlpForm:
    """How an MLP keeping ``hidden`` neurons is built: ``gelu`` (dense form), ``linear`` (fc1, fc2,
    no activation), ``merged`` (one ``Linear(D, D)``; cheaper when more than ``D/2`` neurons are
    kept) or ``removed``."""
    if not hidden:
        return "removed"
    if activation:
        return "gelu"
    return "merged" if 2 * hidden > embed_dim else "linear"


def tokens_entering(num_patches: int, keep_tokens: Sequence[int]) -> tuple[int, ...]:
    """Patch tokens entering each layer, given the tokens each layer keeps."""
    return (num_patches, *keep_tokens[:-1])


@dataclass(frozen=True)
class LayerPolicy:
    """What survives in one block. Index lists are strictly increasing.

    Attributes:
        attention: whether the attention sub-layer is kept (if not, a pure residual remains).
        heads: kept head indices of the dense layer.
        qk: per kept head, the kept query/key dims (pruned jointly).
        v: per kept head, the kept value dims.
        activation: whether the MLP activation is kept (if not, fc1 and fc2 fold into a linear map).
        mlp: kept MLP hidden neurons (empty: the MLP sub-layer is removed).
        keep_tokens: patch tokens kept from this layer's MLP on.
        token_prior: optional offline importance of each patch-grid position (STAR's inter-layer
            score), fused with the class token's attention when this layer ranks tokens.
        token_fusion: weight of the online class-token attention in that fusion (1: online only).
    """

    attention: bool
    heads: tuple[int, ...]
    qk: tuple[tuple[int, ...], ...]
    v: tuple[tuple[int, ...], ...]
    activation: bool
    mlp: tuple[int, ...]
    keep_tokens: int
    token_prior: tuple[float, ...] | None = None
    token_fusion: float = 1.0

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def qk_dim(self) -> int:
        return len(self.qk[0]) if self.qk else 0

    @property
    def v_dim(self) -> int:
        return len(self.v[0]) if self.v else 0

    @property
    def mlp_hidden(self) -> int:
        return len(self.mlp)

    def mlp_form(self, embed_dim: int) -> MlpForm:
        """How the MLP is built (see :func:`mlp_form`)."""
        return mlp_form(len(self.mlp), activation=self.activation, embed_dim=embed_dim)


@dataclass(frozen=True)
class Policy:
    """A pruned ViT: the dense base, one :class:`LayerPolicy` per block, and the kept channels of
    the residual stream. Validates itself.

    Attributes:
        base: the dense architecture.
        layers: what each block keeps.
        embed: the kept channels of the residual (embedding) stream, one index set for the whole
            model: the patch embedding, position embedding, prefix tokens, every norm, the inputs
            of qkv and fc1, the outputs of proj and fc2, LayerScale and the classifier. ``None``
            keeps all ``base.embed_dim`` (a full list is stored as ``None``).
    """

    base: Architecture
    layers: tuple[LayerPolicy, ...]
    embed: tuple[int, ...] | None = None
    format: ClassVar[str] = FORMAT

    def __post_init__(self) -> None:
        if self.embed is not None and tuple(self.embed) == tuple(range(self.base.embed_dim)):
            object.__setattr__(self, "embed", None)  # one spelling for "all kept"
        _validate(self)

    @property
    def embed_dim(self) -> int:
        """Width ``D'`` of the pruned residual stream."""
        return self.base.embed_dim if self.embed is None else len(self.embed)

    @classmethod
    def keep_all(cls, base: Architecture) -> Policy:
        """The policy that keeps everything: applied, it reproduces the dense model."""
        layer = LayerPolicy(
            attention=True,
            heads=tuple(range(base.num_heads)),
            qk=(tuple(range(base.head_dim)),) * base.num_heads,
            v=(tuple(range(base.head_dim)),) * base.num_heads,
            activation=True,
            mlp=tuple(range(base.mlp_hidden)),
            keep_tokens=base.num_patches,
        )
        return cls(base=base, layers=(layer,) * base.depth)

    @property
    def tokens_in(self) -> tuple[int, ...]:
        """Patch tokens entering each layer (before its own token pruning)."""
        return tokens_entering(self.base.num_patches, [layer.keep_tokens for layer in self.layers])

    def is_keep_all(self) -> bool:
        return self == Policy.keep_all(self.base)

    def summary(self) -> dict[str, float | int]:
        """A few numbers describing the structure (for tables and logs)."""
        base, layers = self.base, self.layers
        kept = [layer for layer in layers if layer.attention]
        return {
            "heads": sum(layer.num_heads for layer in layers),
            "qk_dim": round(sum(layer.qk_dim for layer in kept) / max(1, len(kept)), 2),
            "v_dim": round(sum(layer.v_dim for layer in kept) / max(1, len(kept)), 2),
            "mlp_ratio": round(sum(layer.mlp_hidden for layer in layers) / (base.mlp_hidden * base.depth), 4),
            "tokens_final": layers[-1].keep_tokens,
            "attn_removed": base.depth - len(kept),
            "act_removed": sum(not layer.activation for layer in layers),
            "embed_dim": self.embed_dim,
        }

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        base = {f.name: _plain(getattr(self.base, f.name)) for f in fields(Architecture)}
        layers = [
            {f.name: _plain(getattr(layer, f.name)) for f in fields(LayerPolicy)} for layer in self.layers
        ]
        return {"format": FORMAT, "base": base, "embed": _plain(self.embed), "layers": layers}

    def to_json(self) -> str:
        """Canonical JSON: the base indented, one line per layer. ``from_json`` inverts it exactly."""
        doc = self.to_dict()
        head = json.dumps({"format": doc["format"], "base": doc["base"]}, indent=2)
        head = f'{head[:-2]},\n  "embed": {json.dumps(doc["embed"])}\n}}'
        layers = ",\n    ".join(json.dumps(layer, separators=(", ", ": ")) for layer in doc["layers"])
        return f'{head[:-2]},\n  "layers": [\n    {layers}\n  ]\n}}\n'

    @classmethod
    def from_dict(cls, doc: Any) -> Policy:
        """Parse a policy document; raises :class:`PolicyError` naming the offending field."""
        from vitprune.spaces.policy_json import Reader  # reads into this module's classes

        reader = Reader()
        if not isinstance(doc, dict):
            raise PolicyError("policy: expected a JSON object")
        if doc.get("format") not in FORMATS:
            raise PolicyError(f"format: expected one of {', '.join(FORMATS)}, got {doc.get('format')!r}")
        version_1 = doc["format"] == FORMATS[0]
        reader.no_extra(doc, {"format", "base", "layers"} | (set() if version_1 else {"embed"}), "")
        base = reader.architecture(doc.get("base"), "base")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise PolicyError("layers: expected a list with one entry per block")
        embed = None if version_1 or doc.get("embed") is None else reader.integers(doc["embed"], "embed")
        return cls(
            base=base,
            layers=tuple(reader.layer(layer, f"layers[{i}]") for i, layer in enumerate(layers)),
            embed=embed,
        )

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"policy: not valid JSON ({error})") from None
        return cls.from_dict(doc)


def _plain(value: Any) -> Any:
    """Tuples become lists (recursively) so that the JSON reads naturally."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# -- validation -----------------------------------------------------------------------------------


def _check_indices(indices: tuple[int, ...], *, size: int, what: str, where: str) -> None:
    for index in indices:
        if not 0 <= index < size:
            raise PolicyError(f"{where}: index {index} out of range for {size} {what}")
    for first, second in itertools.pairwise(indices):
        if second <= first:
            raise PolicyError(f"{where}: indices must be strictly increasing, got {first} then {second}")


def _check_token_prior(layer: LayerPolicy, *, prunes: bool, num_patches: int, where: str) -> None:
    if not 0.0 <= layer.token_fusion <= 1.0:
        raise PolicyError(f"{where}.token_fusion: must be in [0, 1], got {layer.token_fusion}")
    if layer.token_prior is None:
        if layer.token_fusion != 1.0:
            raise PolicyError(f"{where}.token_fusion: must be 1.0 without a token_prior")
        return
    if not prunes:
        raise PolicyError(f"{where}.token_prior: only layers that prune tokens take a prior")
    if len(layer.token_prior) != num_patches:
        raise PolicyError(
            f"{where}.token_prior: expected one score per patch position ({num_patches}), "
            f"got {len(layer.token_prior)}"
        )
    if not all(math.isfinite(value) and value > 0 for value in layer.token_prior):
        raise PolicyError(f"{where}.token_prior: scores must be finite and > 0")


def _validate(policy: Policy) -> None:
    base = policy.base
    if policy.embed is not None:
        _check_indices(policy.embed, size=base.embed_dim, what="embedding channels", where="embed")
        if not policy.embed:
            raise PolicyError("embed: the residual stream needs at least one channel")
    if len(policy.layers) != base.depth:
        raise PolicyError(f"layers: expected {base.depth} entries (base.depth), got {len(policy.layers)}")
    if base.num_patches < 1:
        raise PolicyError("base.grid_size: the patch grid must hold at least one patch")
    for name in ("embed_dim", "depth", "num_heads", "head_dim", "mlp_hidden", "in_chans"):
        if getattr(base, name) < 1:
            raise PolicyError(f"base.{name}: must be >= 1, got {getattr(base, name)}")
    tokens = base.num_patches
    for i, layer in enumerate(policy.layers):
        where = f"layers[{i}]"
        _check_indices(layer.heads, size=base.num_heads, what="heads", where=f"{where}.heads")
        if layer.attention and not layer.heads:
            raise PolicyError(f"{where}.heads: a kept attention layer needs at least one head")
        if not layer.attention and (layer.heads or layer.qk or layer.v):
            raise PolicyError(
                f"{where}.heads: must be empty when attention is false (got {len(layer.heads)})"
            )
        for name in ("qk", "v"):
            per_head = getattr(layer, name)
            if len(per_head) != len(layer.heads):
                raise PolicyError(
                    f"{where}.{name}: expected one index list per kept head ({len(layer.heads)}), "
                    f"got {len(per_head)}"
                )
            for h, indices in enumerate(per_head):
                _check_indices(indices, size=base.head_dim, what="head dims", where=f"{where}.{name}[{h}]")
                if not indices:
                    raise PolicyError(f"{where}.{name}[{h}]: a kept head needs at least one dim")
                if len(indices) != len(per_head[0]):
                    raise PolicyError(
                        f"{where}.{name}[{h}]: keeps {len(indices)} dims but {name}[0] keeps "
                        f"{len(per_head[0])}; all heads of a layer keep the same number"
                    )
        _check_indices(layer.mlp, size=base.mlp_hidden, what="MLP neurons", where=f"{where}.mlp")
        if not 1 <= layer.keep_tokens <= tokens:
            raise PolicyError(
                f"{where}.keep_tokens: must be in [1, {tokens}] (the patch tokens entering this layer), "
                f"got {layer.keep_tokens}"
            )
        if layer.keep_tokens < tokens and not layer.attention:
            raise PolicyError(
                f"{where}.keep_tokens: tokens are ranked by this layer's attention, which is removed; "
                f"keep {tokens} here and prune at a layer with attention"
            )
        if layer.keep_tokens < tokens and not base.class_token:
            raise PolicyError(
                f"{where}.keep_tokens: token pruning needs a class token, and {base.model} has none"
            )
        _check_token_prior(
            layer, prunes=layer.keep_tokens < tokens, num_patches=base.num_patches, where=where
        )
        tokens = layer.keep_tokens

"""The shape of a pruned ViT: how many heads, dims, neurons and tokens each block keeps, not which.

Costs (MACs, parameters, modelled latency) depend only on these counts, so the budget projection
works on shapes (microseconds each) and turns only the shape it settles on into a
:class:`~vitprune.spaces.policy.Policy` by ranking units with the importance scores.

>>> shape = Shape.of(policy)                                  # doctest: +SKIP
>>> macs(shape) == macs(policy)                               # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitprune.spaces.policy import Architecture, MlpForm, Policy, mlp_form, tokens_entering


@dataclass(frozen=True)
class LayerShape:
    """Counts of what one block keeps (the same attributes costs read from a ``LayerPolicy``)."""

    attention: bool
    num_heads: int
    qk_dim: int
    v_dim: int
    activation: bool
    mlp_hidden: int
    keep_tokens: int

    def mlp_form(self, embed_dim: int) -> MlpForm:
        return mlp_form(self.mlp_hidden, activation=self.activation, embed_dim=embed_dim)


@dataclass(frozen=True)
class Shape:
    """The counts of a whole pruned model: its base, one :class:`LayerShape` per block, and the
    width ``embed_dim`` of its residual stream."""

    base: Architecture
    layers: tuple[LayerShape, ...]
    embed_dim: int

    @property
    def tokens_in(self) -> tuple[int, ...]:
        """Patch tokens entering each layer (before its own token pruning)."""
        return tokens_entering(self.base.num_patches, [layer.keep_tokens for layer in self.layers])

    @classmethod
    def of(cls, policy: Policy) -> Shape:
        return cls(
            base=policy.base,
            layers=tuple(
                LayerShape(
                    attention=layer.attention,
                    num_heads=layer.num_heads,
                    qk_dim=layer.qk_dim,
                    v_dim=layer.v_dim,
                    activation=layer.activation,
                    mlp_hidden=layer.mlp_hidden,
                    keep_tokens=layer.keep_tokens,
                )
                for layer in policy.layers
            ),
            embed_dim=policy.embed_dim,
        )

    def replace_layers(self, layers: Sequence[LayerShape]) -> Shape:
        return Shape(base=self.base, layers=tuple(layers), embed_dim=self.embed_dim)

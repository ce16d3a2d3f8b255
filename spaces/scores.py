"""Importance scores of the prunable units of a dense ViT: what an importance criterion returns.

Higher means more important: builders keep the highest-scoring units. A criterion fills the
fields of the dimensions it scores and leaves the others ``None``; :meth:`Scores.combine` takes
each dimension from the criterion the user chose for it. Scores are plain Python floats so that
the search space and decoder stay free of torch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture

# The search dimensions and the Scores fields that rank each of them.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "heads": ("heads",),
    "qk": ("qk",),
    "v": ("v",),
    "mlp": ("mlp",),
    "tokens": ("token_prior", "token_fusion", "token_rates"),
    "depth": ("attn_layers", "act_layers"),
    "embed": ("embed",),
}


@dataclass(frozen=True)
class Scores:
    """Per-unit importances, shaped like the dense model; ``None`` where a criterion is silent.

    Attributes:
        criterion: name of the criterion (or combination) that produced them.
        heads: ``[layer][head]``.
        qk: ``[layer][head][dim]``, one score per jointly pruned query/key dim.
        v: ``[layer][head][dim]``.
        mlp: ``[layer][neuron]``.
        attn_layers: ``[layer]``, importance of the whole attention sub-layer.
        act_layers: ``[layer]``, importance of the MLP activation (low: nearly linear).
        token_prior: ``[layer][patch position]``, offline importance of each grid position,
            fused with the online class-token attention where a layer prunes tokens (STAR).
        token_fusion: ``[layer]``, weight of the online attention in that fusion.
        token_rates: ``[layer]``, suggested keep rates of patch tokens (``token_keep: auto``).
        embed: ``[channel]``, importance of each channel of the residual stream (one ranking for
            every layer: the stream is pruned consistently).
    """

    criterion: str
    heads: tuple[tuple[float, ...], ...] | None = None
    qk: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    v: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    mlp: tuple[tuple[float, ...], ...] | None = None
    attn_layers: tuple[float, ...] | None = None
    act_layers: tuple[float, ...] | None = None
    token_prior: tuple[tuple[float, ...], ...] | None = None
    token_fusion: tuple[float, ...] | None = None
    token_rates: tuple[float, ...] | None = None
    embed: tuple[float, ...] | None = None

    def check(self, base: Architecture) -> Scores:
        """Raise :class:`InputError` unless every present field is shaped like ``base``; returns ``self``."""
        L = base.depth
        expected = {
            "heads": (L, base.num_heads),
            "qk": (L, base.num_heads, base.head_dim),
            "v": (L, base.num_heads, base.head_dim),
            "mlp": (L, base.mlp_hidden),
            "attn_layers": (L,),
            "act_layers": (L,),
            "token_prior": (L, base.num_patches),
            "token_fusion": (L,),
            "token_rates": (L,),
            "embed": (base.embed_dim,),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and (got := _shape(value, len(shape))) != shape:
                raise InputError(
                    f"scores.{name} ({self.criterion}): shape {got} does not match the model {shape}"
                )
        return self

    def require(self, name: str) -> Any:
        """The field ``name``, or an :class:`InputError` saying which criterion lacks it."""
        value = getattr(self, name)
        if value is None:
            dimension = next(dim for dim, names in DIMENSIONS.items() if name in names)
            raise InputError(
                f"criteria.{dimension}: {self.criterion} does not score {dimension}; "
                "choose a criterion that does"
            )
        return value

    @classmethod
    def combine(cls, by_dimension: Mapping[str, Scores]) -> Scores:
        """Take each dimension's fields from the scores chosen for it.

        >>> Scores.combine({"heads": hsic, "qk": snp, "v": snp, "mlp": hsic})  # doctest: +SKIP
        """
        unknown = sorted(set(by_dimension) - set(DIMENSIONS))
        if unknown:
            raise InputError(f"criteria.{unknown[0]}: unknown dimension (known: {', '.join(DIMENSIONS)})")
        values: dict[str, Any] = {}
        for dimension, source in by_dimension.items():
            for name in DIMENSIONS[dimension]:
                values[name] = getattr(source, name)
        label = "+".join(f"{dim}={src.criterion}" for dim, src in by_dimension.items())
        return replace(cls(criterion=label), **values)

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> Scores:
        doc = json.loads(text)
        values = {f.name: _tuples(doc.get(f.name)) for f in fields(cls) if f.name != "criterion"}
        return cls(criterion=doc["criterion"], **values)


def random_scores(base: Architecture, *, seed: int = 0) -> Scores:
    """Seeded uniform scores for every dimension, from Python's RNG (no torch, no model): for studies
    of the projection and the cost model on architectures alone, where rankings do not change any
    count. Token rates are drawn in ``[0.5, 1]``. The ``random`` criterion is the torch baseline."""
    rng = random.Random(seed)

    def draw(*shape: int) -> Any:
        if len(shape) == 1:
            return tuple(rng.random() for _ in range(shape[0]))
        return tuple(draw(*shape[1:]) for _ in range(shape[0]))

    L, H, hd = base.depth, base.num_heads, base.head_dim
    return Scores(
        criterion=f"uniform-{seed}",
        heads=draw(L, H),
        qk=draw(L, H, hd),
        v=draw(L, H, hd),
        mlp=draw(L, base.mlp_hidden),
        attn_layers=draw(L),
        act_layers=draw(L),
        token_rates=tuple(0.5 + 0.5 * x for x in draw(L)),
        embed=draw(base.embed_dim),
    )


def _tuples(value: Any) -> Any:
    if value is None:
        return None
    return tuple(_tuples(item) for item in value) if isinstance(value, list | tuple) else float(value)


def _shape(value: Any, rank: int) -> tuple[int, ...]:
    """Shape of a nested sequence; raises if it is ragged."""
    if rank == 0:
        return ()
    inner = {_shape(item, rank - 1) for item in value}
    if len(inner) > 1:
        raise InputError(f"scores: ragged nesting {sorted(inner)}")
    return (len(value), *(inner.pop() if inner else (0,) * (rank - 1)))

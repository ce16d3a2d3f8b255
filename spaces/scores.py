"""Importance scores of every prunable unit of a dense ViT: what an importance criterion returns.

Higher means more important: builders keep the highest-scoring units. Scores are plain Python
floats so that the search space and decoder stay free of torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture


@dataclass(frozen=True)
class Scores:
    """Per-unit importances, shaped like the dense model.

    Attributes:
        criterion: name of the criterion that produced them.
        heads: ``[layer][head]``.
        qk: ``[layer][head][dim]``, one score per jointly pruned query/key dim.
        v: ``[layer][head][dim]``.
        mlp: ``[layer][neuron]``.
        attn_layers: ``[layer]``, importance of the whole attention sub-layer.
        act_layers: ``[layer]``, importance of the MLP activation (low: nearly linear).
        token_rates: optional per-layer keep rates of patch tokens suggested by the criterion.
    """

    criterion: str
    heads: tuple[tuple[float, ...], ...]
    qk: tuple[tuple[tuple[float, ...], ...], ...]
    v: tuple[tuple[tuple[float, ...], ...], ...]
    mlp: tuple[tuple[float, ...], ...]
    attn_layers: tuple[float, ...]
    act_layers: tuple[float, ...]
    token_rates: tuple[float, ...] | None = None

    def check(self, base: Architecture) -> Scores:
        """Raise :class:`InputError` unless the shapes match ``base``; returns ``self``."""
        expected = {
            "heads": (base.depth, base.num_heads),
            "qk": (base.depth, base.num_heads, base.head_dim),
            "v": (base.depth, base.num_heads, base.head_dim),
            "mlp": (base.depth, base.mlp_hidden),
            "attn_layers": (base.depth,),
            "act_layers": (base.depth,),
        }
        for name, shape in expected.items():
            got = _shape(getattr(self, name), len(shape))
            if got != shape:
                raise InputError(f"scores.{name}: shape {got} does not match the model {shape}")
        if self.token_rates is not None and len(self.token_rates) != base.depth:
            raise InputError(f"scores.token_rates: expected {base.depth} rates, got {len(self.token_rates)}")
        return self

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str) -> Scores:
        doc = json.loads(text)
        rates = doc.get("token_rates")
        return cls(
            criterion=doc["criterion"],
            heads=_tuples(doc["heads"]),
            qk=_tuples(doc["qk"]),
            v=_tuples(doc["v"]),
            mlp=_tuples(doc["mlp"]),
            attn_layers=_tuples(doc["attn_layers"]),
            act_layers=_tuples(doc["act_layers"]),
            token_rates=None if rates is None else _tuples(rates),
        )


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list | tuple) else float(value)


def _shape(value: Any, rank: int) -> tuple[int, ...]:
    """Shape of a nested sequence; raises if it is ragged."""
    if rank == 0:
        return ()
    inner = {_shape(item, rank - 1) for item in value}
    if len(inner) > 1:
        raise InputError(f"scores: ragged nesting {sorted(inner)}")
    return (len(value), *(inner.pop() if inner else (0,) * (rank - 1)))

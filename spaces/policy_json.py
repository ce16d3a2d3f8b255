"""Reading policy documents: typed access that names the exact path of what is wrong, and the
policy file's JSON Schema (generated from the dataclasses, so it cannot drift from the code)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from vitprune.spaces.errors import PolicyError
from vitprune.spaces.policy import Architecture, LayerPolicy


class Reader:
    """Typed access to a JSON document that reports the exact path of what is wrong."""

    def no_extra(self, doc: dict[str, Any], allowed: set[str], where: str) -> None:
        extra = sorted(set(doc) - allowed)
        if extra:
            prefix = f"{where}." if where else ""
            raise PolicyError(f"{prefix}{extra[0]}: unknown field (known: {', '.join(sorted(allowed))})")

    def get(self, doc: dict[str, Any], key: str, where: str) -> Any:
        if key not in doc:
            raise PolicyError(f"{where}.{key}: missing")
        return doc[key]

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where}: expected an integer, got {json.dumps(value)}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise PolicyError(f"{where}: expected true or false, got {json.dumps(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise PolicyError(f"{where}: expected a string, got {json.dumps(value)}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{where}: expected a number, got {json.dumps(value)}")
        return float(value)

    def integers(self, value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, list):
            raise PolicyError(f"{where}: expected a list of integers, got {json.dumps(value)[:40]}")
        return tuple(self.integer(item, f"{where}[{i}]") for i, item in enumerate(value))

    def pair(self, value: Any, where: str) -> tuple[int, int]:
        pair = self.integers(value, where)
        if len(pair) != 2:
            raise PolicyError(f"{where}: expected two integers, got {len(pair)}")
        return pair[0], pair[1]

    def architecture(self, doc: Any, where: str) -> Architecture:
        if not isinstance(doc, dict):
            raise PolicyError(f"{where}: expected an object describing the dense model")
        self.no_extra(doc, {f.name for f in fields(Architecture)}, where)
        values: dict[str, Any] = {}
        for f in fields(Architecture):
            value = self.get(doc, f.name, where)
            path = f"{where}.{f.name}"
            if f.type == "str":
                values[f.name] = self.string(value, path)
            elif f.type == "int":
                values[f.name] = self.integer(value, path)
            elif f.type == "bool":
                values[f.name] = self.boolean(value, path)
            elif f.type == "tuple[int, int]":
                values[f.name] = self.pair(value, path)
            elif isinstance(value, dict):
                values[f.name] = value
            else:
                raise PolicyError(f"{path}: expected an object of timm.create_model arguments")
        return Architecture(**values)

    def layer(self, doc: Any, where: str) -> LayerPolicy:
        if not isinstance(doc, dict):
            raise PolicyError(f"{where}: expected an object")
        self.no_extra(doc, {f.name for f in fields(LayerPolicy)}, where)
        per_head = {}
        for name in ("qk", "v"):
            value = self.get(doc, name, where)
            if not isinstance(value, list):
                raise PolicyError(f"{where}.{name}: expected a list of index lists, one per kept head")
            per_head[name] = tuple(
                self.integers(item, f"{where}.{name}[{h}]") for h, item in enumerate(value)
            )
        return LayerPolicy(
            attention=self.boolean(self.get(doc, "attention", where), f"{where}.attention"),
            heads=self.integers(self.get(doc, "heads", where), f"{where}.heads"),
            qk=per_head["qk"],
            v=per_head["v"],
            activation=self.boolean(self.get(doc, "activation", where), f"{where}.activation"),
            mlp=self.integers(self.get(doc, "mlp", where), f"{where}.mlp"),
            keep_tokens=self.integer(self.get(doc, "keep_tokens", where), f"{where}.keep_tokens"),
            token_prior=self.prior(doc.get("token_prior"), f"{where}.token_prior"),
            token_fusion=self.number(doc.get("token_fusion", 1.0), f"{where}.token_fusion"),
        )

    def prior(self, value: Any, where: str) -> tuple[float, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise PolicyError(f"{where}: expected null or a list of numbers")
        return tuple(self.number(item, f"{where}[{i}]") for i, item in enumerate(value))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file (structure and types; ranges depend on ``base``).

    Generated from the dataclasses with pydantic so that it cannot drift from the code; the copy
    shipped as ``policy.schema.json`` is checked against it by the tests.
    """
    from pydantic import TypeAdapter

    schema = TypeAdapter(_PolicyDocument).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://vitprune.dev/schemas/policy-2.json"
    schema["title"] = "vitprune pruning policy"
    return schema


@dataclass(frozen=True)
class _PolicyDocument:
    """The policy file as a document: the shape :meth:`Policy.to_dict` writes."""

    format: Literal["vitprune.policy/2"]
    base: Architecture
    embed: list[int] | None = None  # kept residual channels; null keeps all (format /1 has no key)
    layers: list[LayerPolicy] = field(default_factory=list)

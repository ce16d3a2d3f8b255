"""Validated configuration of everything a trial needs: model, data, dense training, fine-tuning,
latency measurement. The search spec (``vitprune.search``) composes these sections.

Every section forbids unknown keys, so a typo is an error naming the key, not a silent default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vitprune.spaces import InputError

DIGITS_MODEL = "vitprune_digits_vit"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Settings that do not change what a cache holds (checks, not inputs).
    not_in_digest: ClassVar[frozenset[str]] = frozenset()
    # Settings added after caches keyed by this digest existed: they enter it only when set away
    # from their default (which reproduces the behaviour from before), so those caches stay valid.
    digest_unless_default: ClassVar[frozenset[str]] = frozenset()

    def digest(self) -> str:
        """A stable hash of the section's content (for caches keyed by configuration)."""
        exclude = set(self.not_in_digest) | {
            name
            for name in self.digest_unless_default
            if getattr(self, name) == type(self).model_fields[name].default
        }
        text = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ModelConfig(Section):
    """The dense model: a timm ViT by name, with weights from the hub, a checkpoint, or training."""

    name: str = DIGITS_MODEL
    pretrained: bool = False
    checkpoint: Path | None = None
    args: dict[str, Any] = Field(default_factory=dict, description="timm.create_model overrides")

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelConfig:
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("give either pretrained: true or checkpoint, not both")
        return self


class DataConfig(Section):
    """Where images come from and how they are split and batched.

    ``source: digits`` is scikit-learn's bundled 8×8 digits (no download). ``imagefolder`` reads
    ``PATH/train`` and ``PATH/val`` class folders; ``cifar10``/``cifar100`` a torchvision-format
    folder; ``mnist``/``fashion-mnist`` a folder with the data set's four IDX files. The search-val
    split is carved from train (the search never sees test).
    """

    source: Literal["digits", "imagefolder", "cifar10", "cifar100", "mnist", "fashion-mnist"] = "digits"
    path: Path | None = None
    search_val_fraction: float = Field(0.15, gt=0, lt=1)
    max_train_samples: int | None = Field(None, gt=0, description="subsample train for quick searches")
    augment_shift: int = Field(
        1, ge=0, description="digits, mnist, fashion-mnist: random shifts of up to N pixels (train only)"
    )
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = False
    seed: int = 0
    test_seed: int = Field(
        0, ge=0, description="digits: which stratified 20 % is test (repeat a comparison on other images)"
    )
    check_images: bool = Field(True, description="imagefolder: open every image header before any work")

    not_in_digest: ClassVar[frozenset[str]] = frozenset({"check_images"})
    digest_unless_default: ClassVar[frozenset[str]] = frozenset({"test_seed"})

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """Accept the CLI shorthand ``digits``, ``imagefolder:PATH``, ``cifar10:PATH``."""
        if isinstance(value, str):
            source, _, path = value.partition(":")
            return {"source": source, "path": path or None}
        return value

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.source != "digits" and self.path is None:
            raise ValueError(f"source {self.source} needs a path (e.g. {self.source}:/data/{self.source})")
        if self.source != "digits" and self.test_seed != 0:
            raise ValueError(f"test_seed: only digits draws its test split; {self.source}'s test is fixed")
        return self


class DenseTrainingConfig(Section):
    """Training of the dense model when no trained weights fit the data (the embedded default, or
    a checkpoint whose classifier had to be resized)."""

    epochs: int = Field(80, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class DistillationConfig(Section):
    """Knowledge distillation from the dense teacher.

    ``soft``: ``(1−α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``;
    ``hard`` (DeiT): ``(1−α)·CE(s, y) + α·CE(s, argmax t)``.
    """

    kind: Literal["soft", "hard"] = "soft"
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class FinetuneConfig(Section):
    """The brief fine-tune of each pruned model (AdamW, cosine schedule with warm-up)."""

    epochs: int = Field(3, ge=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    kd: DistillationConfig | None = Field(default_factory=DistillationConfig)
    seed: int = 0


class LatencyConfig(Section):
    """How latency is measured on the trial's device."""

    batch_size: int = Field(32, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    warmup: int = Field(3, ge=0)
    repeats: int = Field(10, gt=0)


# -- reading configuration files ------------------------------------------------------------------

RAY_SPEC_KEY = ("metadata", "vitprune")


def read_spec(path: str | Path) -> tuple[dict[str, Any], str]:
    """The vitprune document in a YAML file, and the key path it sits under.

    The file is either a plain vitprune spec, or a Ray cluster launcher YAML whose
    ``metadata.vitprune`` key holds the spec (Ray ignores ``metadata`` and rejects unknown
    top-level keys), so that ``ray submit search.yaml ...`` carries the search in the same file.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    if "cluster_name" in doc or "metadata" in doc:
        spec = doc.get("metadata", {}).get("vitprune") if isinstance(doc.get("metadata"), dict) else None
        if not isinstance(spec, dict):
            raise InputError(f"{path}: a Ray cluster YAML holds the vitprune spec under metadata.vitprune")
        return spec, "metadata.vitprune."
    return doc, ""


def validation_message(error: ValidationError, prefix: str = "") -> str:
    """The first pydantic error as one line: ``key.path: message``."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{prefix}{location}: {message}" if location else f"{prefix.rstrip('.')}: {message}"


S = TypeVar("S", bound=Section)


def parse_section(cls: type[S], value: Any, where: str) -> S:
    """Validate one section; errors become :class:`InputError` naming ``where.key``."""
    try:
        return cls.model_validate({} if value is None else value)
    except ValidationError as error:
        raise InputError(validation_message(error, f"{where}.")) from None

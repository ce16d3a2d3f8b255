"""The search spec: one YAML, either a plain spec or a Ray cluster launcher YAML whose
``metadata.vitprune`` key holds it (Ray ignores ``metadata``), so that ``ray submit search.yaml``
carries the search in the same file. Validated with pydantic; errors are one line with the key
path, e.g. ``metadata.vitprune.budget.macs: must be > 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from vitprune.evaluators.config import (
    DataConfig,
    DenseTrainingConfig,
    FinetuneConfig,
    LatencyConfig,
    ModelConfig,
    Section,
    read_spec,
    validation_message,
)
from vitprune.spaces import InputError
from vitprune.spaces.space import ALL_DIMENSIONS, SearchSpace

Dimension = Literal["heads", "qk", "v", "mlp", "tokens", "depth", "embed"]
Metric = Literal["macs", "params", "latency_ms"]
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _amount(value: float | str | None) -> tuple[float, bool] | None:
    """``"50%"`` → ``(0.5, True)`` (a ratio of dense); ``2.3e9`` → ``(2.3e9, False)``."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            try:
                return float(value), False
            except ValueError:
                raise ValueError(f"expected a number or a percentage such as '50%', got {value!r}") from None
        return float(match.group(1)) / 100, True
    return float(value), False


class BudgetSpec(Section):
    """One of ``macs``, ``params`` or ``latency_ms``: absolute, or a ratio of dense such as ``"50%"``.

    ``batch_size``, ``dtype`` and ``device`` say how latency is measured (latency budgets and the
    ``latency_ms`` every trial reports).
    """

    macs: float | str | None = None
    params: float | str | None = None
    latency_ms: float | str | None = None
    batch_size: int = Field(32, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("macs", "params", "latency_ms")
    @classmethod
    def _in_range(cls, value: float | str | None) -> float | str | None:
        amount = _amount(value)
        if amount is None:
            return value
        number, relative = amount
        if relative and not 0 < number <= 1:
            raise ValueError(f"must be a share of the dense model in (0 %, 100 %], got {value!r}")
        if not number > 0 or number == float("inf"):
            raise ValueError(f"must be > 0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        given = [name for name in ("macs", "params", "latency_ms") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of macs, params, latency_ms (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def metric(self) -> Metric:
        return next(name for name in ("macs", "params", "latency_ms") if getattr(self, name) is not None)

    def limit(self, dense_value: float) -> float:
        """The absolute limit, given the dense model's value of the metric."""
        value, relative = _amount(getattr(self, self.metric))
        return value * dense_value if relative else value

    @property
    def latency(self) -> LatencyConfig:
        return LatencyConfig(batch_size=self.batch_size, dtype=self.dtype, device=self.device)


class SpaceSpec(Section):
    kind: Literal["compact", "per_layer"] = "compact"
    dimensions: list[Dimension] = Field(default_factory=lambda: list(ALL_DIMENSIONS), min_length=1)
    align: int = Field(8, gt=0)
    token_keep: Literal["manual", "auto"] = "manual"
    min_token_keep: float = Field(0.1, gt=0, le=1)
    max_drop_attn: int | None = Field(None, ge=0)
    max_drop_act: int | None = Field(None, ge=0)

    def build(self, depth: int) -> SearchSpace:
        return SearchSpace(
            self.kind,
            depth=depth,
            dimensions=frozenset(self.dimensions),
            align=self.align,
            max_drop_attn=self.max_drop_attn,
            max_drop_act=self.max_drop_act,
            token_auto=self.token_keep == "auto",
            min_token_keep=self.min_token_keep,
        )


class CriteriaSpec(Section):
    """The criterion that ranks each dimension (see ``vitprune.evaluators.criteria``)."""

    heads: str = "snp"
    qk: str = "snp"
    v: str = "snp"
    mlp: str = "taylor"
    tokens: str = "star"
    depth: str = "depth"
    embed: str = "magnitude"
    calibration_batches: int = Field(4, gt=0)

    @field_validator("heads", "qk", "v", "mlp", "tokens", "depth", "embed")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        from vitprune.evaluators.criteria import check_criterion

        try:
            check_criterion(name, info.field_name)
        except InputError as error:  # "criteria.heads: ..." already names the key
            raise ValueError(str(error).removeprefix(f"criteria.{info.field_name}: ")) from None
        return name

    def by_dimension(self, dimensions: list[str]) -> dict[str, str]:
        return {dim: getattr(self, dim) for dim in dimensions}


class TrialsSpec(Section):
    total: int = Field(24, gt=0)
    concurrent: int = Field(2, gt=0)
    initial: int = Field(8, gt=0, description="Sobol trials before the GP takes over")
    max_failures: int = Field(1, ge=0, description="retries of a trial that raised")
    synchronous: bool = Field(
        True,
        description="ask the GP for new points only once every running trial has ended, so that a "
        "rerun with the same seed proposes the same points",
    )

    @model_validator(mode="after")
    def _initial_within_total(self) -> TrialsSpec:
        if self.initial > self.total:
            raise ValueError(f"initial ({self.initial}) must not exceed total ({self.total})")
        return self


class GenerationSpec(Section):
    method: Literal["gp_ei", "random"] = "gp_ei"
    num_restarts: int = Field(4, gt=0)
    raw_samples: int = Field(256, gt=0)
    maxiter: int = Field(200, gt=0, description="L-BFGS iterations per acquisition restart")
    uniform_start: bool = Field(
        True, description="the first trial is the uniform policy (every enabled dimension scaled alike)"
    )
    single_dimension_starts: bool = Field(
        True,
        description="then one trial per enabled dimension that reaches the budget alone, every other "
        "dimension left dense",
    )


class ResourcesSpec(Section):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class EarlyStoppingSpec(Section):
    """ASHA over fine-tune epochs, on search-val accuracy; stopped trials are abandoned in Ax."""

    enabled: bool = False
    grace_epochs: int = Field(1, gt=0)
    reduction_factor: int = Field(2, gt=1)


class SelectionSpec(Section):
    """The final choice among the best trials (``vitprune.search.selection``): the ``finalists``
    best feasible trials are fine-tuned ``seeds`` more times and chosen by mean search-val
    accuracy. Off unless configured (``seeds: 0``); ``search.yaml`` turns it on: on digits it chose
    Ax's best trial in all 7 searches measured, on Fashion-MNIST at 50 % of MACs a policy 0.34 test
    points better (BENCHMARKS.md, sections 8 and 9). A Pareto objective keeps its whole front."""

    finalists: int = Field(3, ge=1, description="trials fine-tuned again before the best is chosen")
    seeds: int = Field(0, ge=0, description="extra fine-tunes of each finalist, other seeds (0: off)")

    @property
    def on(self) -> bool:
        return self.finalists > 1 and self.seeds > 0


class StorageSpec(Section):
    """Optional Ax SQL storage next to the JSON snapshots (``sqlite:///PATH`` by default when enabled)."""

    enabled: bool = False
    sql_url: str | None = None


class SearchSpec(Section):
    name: str = "vitprune-search"
    run_dir: Path | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    dense_training: DenseTrainingConfig = Field(default_factory=DenseTrainingConfig)
    budget: BudgetSpec = Field(default_factory=lambda: BudgetSpec(macs="50%"))
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    criteria: CriteriaSpec = Field(default_factory=CriteriaSpec)
    objective: Literal["accuracy", "accuracy, -latency_ms"] = "accuracy"
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.pareto and self.selection.on:
            raise ValueError(
                "selection: chooses one best trial, and a Pareto objective keeps its whole front; "
                "remove selection"
            )
        if self.budget.device == "cuda" and self.resources.gpu == 0:
            raise ValueError(
                "budget.device: cuda measures on a GPU, so the trials need one: set resources.gpu"
            )
        if self.space.token_keep == "auto" and "tokens" in self.space.dimensions:
            from vitprune.evaluators.criteria import check_criterion

            try:
                check_criterion(self.criteria.tokens, "tokens", prior=True)
            except InputError:
                raise ValueError(
                    f"space.token_keep: auto takes its per-layer rates from the tokens criterion, and "
                    f"{self.criteria.tokens} gives none (use criteria.tokens: star)"
                ) from None
        return self

    @property
    def pareto(self) -> bool:
        return self.objective != "accuracy"

    def resolved_run_dir(self, override: str | Path | None = None) -> Path:
        return Path(override or self.run_dir or Path("runs") / self.name).absolute()

    def smoke(self) -> SearchSpec:
        """The same pipeline with tiny settings (``--smoke-test``): minutes become a minute."""
        return self.model_copy(
            update={
                "dense_training": self.dense_training.model_copy(
                    update={"epochs": min(self.dense_training.epochs, 3)}
                ),
                "finetune": self.finetune.model_copy(update={"epochs": 1, "steps": 5}),
                "trials": TrialsSpec(
                    total=3, concurrent=min(2, self.trials.concurrent), initial=2, max_failures=0
                ),
                "generation": self.generation.model_copy(update={"num_restarts": 2, "raw_samples": 64}),
                "criteria": self.criteria.model_copy(update={"calibration_batches": 1}),
            }
        )


def load_spec(path: str | Path) -> tuple[SearchSpec, str]:
    """The validated spec in ``path`` and the key prefix it sits under; errors are one line."""
    doc, prefix = read_spec(path)
    try:
        return SearchSpec.model_validate(doc), prefix
    except ValidationError as error:
        raise InputError(f"{path}: {validation_message(error, prefix)}") from None


def spec_document(spec: SearchSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")

"""Sweep specs: a YAML file -> a validated, strict `Spec`, and the trials it stands for.

Everything a sweep will do is decided here, before Ray starts: a typo'd key, an unknown strategy
or dataset, a bad range or a setting the trial config rejects is one `SpecError` line naming the
file, the key and what is allowed. Nothing in this module imports Ray or MLflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from sweeps.spec.common import (
    MAX_SEED, MAX_TRIALS, Asha, Checkpointing, Failure, Int, SpecBase, SpecError, Strict, TrialSettings, check_data,
    check_defaults, expand_strategies, first_line, kind_name, known_datasets, strategy_generations, validation_line,
)
from sweeps.spec.loader import read_yaml, resolve_path
from sweeps.train.config import TrialConfig


class Grid(Strict):
    strategies: list[str] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    seeds: list[Int] = Field(min_length=1)
    dataset_strategies: dict[str, list[str]] = Field(
        default_factory=dict, description="per dataset, the strategies it runs instead of `strategies` "
                                          "(a costly dataset runs fewer)")

    @field_validator("strategies", "datasets", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        """`seeds: 3` means seeds 0, 1, 2 (a count is bounded before the list is made)."""
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= MAX_TRIALS:
                raise ValueError(f"a seed count must be between 1 and {MAX_TRIALS} (or give a list "
                                 f"of seeds), got {v}")
            return list(range(v))
        return v

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        return expand_strategies(v)

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: list[str]) -> list[str]:
        return known_datasets(v)

    @field_validator("dataset_strategies")
    @classmethod
    def _dataset_strategies(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        out = {}
        for dataset, strategies in v.items():
            try:
                out[dataset] = expand_strategies(strategies)
            except ValueError as e:
                raise ValueError(f"{dataset}: {e}") from None
        return out

    def strategies_for(self, dataset: str) -> list[str]:
        return self.dataset_strategies.get(dataset, self.strategies)

    def shape(self) -> str:
        """How the trials multiply, for people: '5 strategies x 1 datasets x 2 seeds'."""
        if not self.dataset_strategies:
            return f"{len(self.strategies)} strategies x {len(self.datasets)} datasets x {len(self.seeds)} seeds"
        per = ", ".join(f"{len(self.strategies_for(d))} on {d}" for d in self.datasets)
        return f"strategies: {per}; x {len(self.seeds)} seeds"

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        bad = next((s for s in v if not 0 <= s <= MAX_SEED), None)
        if bad is not None:
            raise ValueError(f"seeds must be >= 0 and <= {MAX_SEED}, got {bad}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _size(self) -> Grid:
        for name, strategies in self.dataset_strategies.items():
            if name not in self.datasets:
                raise ValueError(f"dataset_strategies: {name!r} is not in grid.datasets; allowed: "
                                 + ", ".join(self.datasets))
            if not strategies:
                raise ValueError(f"dataset_strategies.{name}: an empty list (leave the dataset out instead)")
        n = sum(len(self.strategies_for(d)) for d in self.datasets) * len(self.seeds)
        if n > MAX_TRIALS:
            raise ValueError(f"{len(self.strategies)} strategies x {len(self.datasets)} datasets x "
                             f"{len(self.seeds)} seeds = {n} trials; a sweep has at most {MAX_TRIALS}")
        return self


class Spec(SpecBase):
    grid: Grid
    failure: Failure = Field(default_factory=Failure)
    scheduler: Asha = Field(default_factory=Asha)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    keep_checkpoints: Int = Field(1, ge=1, description="per running trial")
    keep_final_checkpoint: bool = Field(
        False, description="keep a finished trial's last checkpoint (a fine-tuned encoder's is "
                           "~270 MB: 270 of them fill a disk)")

    def dataset_names(self) -> tuple[str, list[str]]:
        return "grid.datasets", self.grid.datasets

    def trials(self) -> list[TrialSpec]:
        """The grid in a stable order: dataset, then strategy (registry order), then seed (made
        once: each trial's config is then validated once, by whoever asks first)."""
        return list(self._trials)

    @cached_property
    def _trials(self) -> tuple[TrialSpec, ...]:
        gens = strategy_generations(presets=True)
        return tuple(
            TrialSpec(s, d, seed, gens[s], self.regime(d), self.settings(d))
            for d in self.grid.datasets
            for s in self.grid.strategies_for(d)
            for seed in self.grid.seeds
        )

    def targets(self) -> dict[str, float]:
        """Dataset -> target metric value, for datasets that set one."""
        return {d: t for d in self.grid.datasets if (t := self.settings(d).target) is not None}


@dataclass(frozen=True)
class TrialSpec:
    """One grid cell. `key` is stable across runs: it names the trial in Ray and in MLflow."""

    strategy: str
    dataset: str
    seed: int
    generation: int
    regime: str
    settings: TrialSettings = field(compare=False)

    @property
    def key(self) -> str:
        return f"{self.strategy}/{self.dataset}/{self.seed}"

    @property
    def slug(self) -> str:
        """The key as a file-name-safe trial name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.strategy}-{self.dataset}-s{self.seed}")

    def labels(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "generation": self.generation,
            "dataset": self.dataset,
            "regime": self.regime,
            "seed": self.seed,
        }

    def config(self) -> TrialConfig:
        """The trial's full, validated config (raises ValueError on a setting it rejects)."""
        return self._config

    @cached_property
    def _config(self) -> TrialConfig:
        return TrialConfig.create(
            strategy=self.strategy, dataset=self.dataset, seed=self.seed,
            **self.settings.trial_kwargs(),
        )


# ----------------------------------------------------------------------------- loading


def parse_spec(data: Any, source: str = "<spec>", *, check_trials: bool = True) -> Spec:
    """A mapping -> Spec; with `check_trials`, also every trial's config via the trainable."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (name, grid, ...), got {kind_name(data)}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {validation_line(e)}") from None
    if check_trials:
        # A config depends on the seed only through its range, which Grid checked: one seed will do.
        for trial in spec.trials()[:: len(spec.grid.seeds)]:
            try:
                trial.config()
            except (ValueError, TypeError) as e:
                where = _culprit(spec, trial)
                raise SpecError(f"{source}: {where} (trial {trial.key}): {first_line(e)}") from None
        check_defaults(spec.defaults, spec.grid.strategies, spec.grid.datasets, source)
        check_data([t.config() for t in spec.trials()[:: len(spec.grid.seeds)]], "grid.datasets", source)
    return spec


def _culprit(spec: Spec, trial: TrialSpec) -> str:
    """Which section a setting the trainable rejected came from: the dataset's or `defaults`."""
    if trial.dataset not in spec.datasets:
        return "defaults"
    try:
        replace(trial, settings=spec.defaults).config()
    except (ValueError, TypeError):
        return "defaults"
    return f"datasets.{trial.dataset}"


def load_spec(ref: str | Path, *, check_trials: bool = True) -> tuple[Spec, Path]:
    """Read, parse and validate a spec file; returns the spec and the file it came from."""
    path = resolve_path(ref)
    return parse_spec(read_yaml(path), str(path), check_trials=check_trials), path

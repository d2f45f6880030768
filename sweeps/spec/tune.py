"""Tuning specs: a YAML file with a `tune:` section -> a validated, strict `TuneSpec`.

Like sweep specs (sweeps/spec/sweep.py), every mistake is one `SpecError` line naming the file and the
key: a bad range, `log` with a non-positive bound, a parameter the strategy does not have. Nothing
here imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

import dalsopt

from sweeps.spec.common import (
    DEFAULT_VALIDATION, MAX_SEED, MAX_TRIALS, METRICS, VAL_METRICS, Asha, Float, Int, Scalar, SpecBase,
    SpecError, Strict, TrialSettings, check_data, check_defaults, expand_strategies, first_line, known_datasets,
    kind_name, validation_line,
)
from sweeps.spec.credentials import no_credentials
from sweeps.spec.loader import read_yaml, resolve_path
from sweeps.train.config import TrialConfig

JOURNAL_FILE = "optuna-journal.log"
MAX_SEEDS_PER_TRIAL = 100


class Param(Strict):
    """One search-space dimension, in Optuna's conventions."""

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: Float | None = Field(None, gt=0)
    choices: list[Scalar] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes `choices` only (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"`choices` is for categorical parameters, not {self.type}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) > high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low = {self.low:g}")
        if self.log and self.step is not None and self.type == "float":
            raise ValueError("a float parameter takes `log` or `step`, not both")
        if self.type == "int":
            for key in ("low", "high", "step"):
                v = getattr(self, key)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"an int parameter needs a whole `{key}`, got {v:g}")
            if self.log and self.step not in (None, 1):
                raise ValueError("an int parameter on a log scale takes no `step` (other than 1)")
        return self

    def sample_value(self) -> Any:
        """A value in range, to check the strategy accepts the parameter (and its type)."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)

    def distribution(self):
        """The Optuna distribution."""
        from optuna import distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


class Sampler(Strict):
    type: Literal["tpe", "random"] = "tpe"
    seed: Int = Field(0, ge=0, le=MAX_SEED)


class Tune(Strict):
    strategy: str
    datasets: list[str] = Field(min_length=1)
    study_per: Literal["regime", "dataset"] = "regime"
    space: dict[str, Param] = Field(min_length=1)
    trials: Int = Field(ge=1, le=MAX_TRIALS, description="per study")
    concurrency: Int = Field(ge=1, description="trials running at once (always limited)")
    seeds: Int = Field(2, ge=1, le=MAX_SEEDS_PER_TRIAL,
                       description="seeds per trial: the objective is their mean")
    sampler: Sampler = Field(default_factory=Sampler)
    pruning: Asha = Field(default_factory=Asha)
    storage: Annotated[str | None, AfterValidator(no_credentials)] = Field(None, description=f"Optuna storage: an RDB URL or a journal file "
                                                  f"(default: {JOURNAL_FILE} beside the MLflow db)")

    @field_validator("datasets", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        ids = expand_strategies([v])
        if len(ids) != 1 or ids[0] != v:
            raise ValueError(f"tune one strategy id at a time, got {v!r}")
        return v

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: list[str]) -> list[str]:
        return known_datasets(v)

    @model_validator(mode="after")
    def _known_params(self) -> Tune:
        for name, param in self.space.items():
            try:
                dalsopt.resolve(self.strategy, **{name: param.sample_value()})
            except (ValueError, TypeError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"space.{name}: {msg}") from None
        return self


class TuneSpec(SpecBase):
    """A tuning spec. It tunes on validation by default (`metric: val_accuracy`, each dataset holding
    out DEFAULT_VALIDATION of its train split unless it sets `validation`), so the eval (test) split
    stays unseen by the search and the tuned-vs-default comparison on it is fair."""

    tune: Tune
    metric: Literal[METRICS] = "val_accuracy"  # type: ignore[valid-type]

    def dataset_names(self) -> tuple[str, list[str]]:
        return "tune.datasets", self.tune.datasets

    def settings(self, dataset: str) -> TrialSettings:
        """The dataset's settings; on a val_* metric with `validation` unset, DEFAULT_VALIDATION."""
        settings = super().settings(dataset)
        if self.metric in VAL_METRICS and settings.model_dump().get("validation") is None:
            settings = settings.merged(TrialSettings(validation=DEFAULT_VALIDATION))
        return settings

    def studies(self) -> list[Study]:
        """One study per regime (its datasets together) or per dataset, in the spec's order."""
        groups: dict[str, list[str]] = {}
        for d in self.tune.datasets:
            key = self.regime(d) if self.tune.study_per == "regime" else d
            groups.setdefault(key, []).append(d)
        return [Study(self, key, tuple(ds)) for key, ds in groups.items()]

    def optuna_storage_url(self) -> str:
        """An RDB URL, or a journal file path (default: beside a local SQLite MLflow db)."""
        if self.tune.storage:
            s = self.tune.storage
            return s if "://" in s else str(Path(s).resolve())
        uri = self.tracking_uri()
        if uri.startswith("sqlite:///"):
            return str(Path(uri.removeprefix("sqlite:///")).parent / JOURNAL_FILE)
        return str(Path(JOURNAL_FILE).resolve())


@dataclass(frozen=True)
class Study:
    """One Optuna study: the datasets whose (dataset x seed) mean is its objective."""

    spec: TuneSpec
    key: str  # regime or dataset
    datasets: tuple[str, ...]

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{self.spec.name}-{self.key}")

    @property
    def regime(self) -> str:
        return self.spec.regime(self.datasets[0])

    def configs(self, seed: int, hp: dict[str, Any]) -> list[TrialConfig]:
        """The trial config per dataset for one seed, with the sampled `hp` on top."""
        out = []
        for d in self.datasets:
            kwargs = self.spec.settings(d).trial_kwargs()
            kwargs["hp"] = {**kwargs.get("hp", {}), **hp}
            out.append(TrialConfig.create(strategy=self.spec.tune.strategy, dataset=d, seed=seed, **kwargs))
        return out


def parse_tune_spec(data: Any, source: str = "<spec>", *, check_trials: bool = True) -> TuneSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (name, tune, ...), got {kind_name(data)}")
    if "tune" not in data:
        unknown = [k for k in data if k not in TuneSpec.model_fields]
        hint = ("; a sweep spec? run it with `dals sweep run`" if "grid" in data
                else f"; unknown key {unknown[0]!r}" if unknown else "")
        raise SpecError(f"{source}: tune: missing (a tuning spec needs a `tune:` section){hint}")
    try:
        spec = TuneSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {validation_line(e)}") from None
    if check_trials:
        sample = {k: p.sample_value() for k, p in spec.tune.space.items()}
        configs = []
        for study in spec.studies():
            try:
                configs += study.configs(0, sample)
            except (ValueError, TypeError) as e:
                where = _culprit(study)
                raise SpecError(f"{source}: {where}: study {study.name}: {first_line(e)}") from None
        check_defaults(spec.defaults, [spec.tune.strategy], spec.tune.datasets, source)
        check_data(configs, "tune.datasets", source)
    return spec


def _culprit(study: Study) -> str:
    """Which section a setting the trainable rejected came from: `defaults`, a dataset's, or the
    search space's values (the first point of each range, the first choice)."""
    spec = study.spec
    for d in study.datasets:
        for where, settings in (("defaults", spec.defaults), (f"datasets.{d}", spec.settings(d))):
            try:
                TrialConfig.create(strategy=spec.tune.strategy, dataset=d, seed=0, **settings.trial_kwargs())
            except (ValueError, TypeError):
                return where
    return "tune.space"


def load_tune_spec(ref: str | Path, *, check_trials: bool = True) -> tuple[TuneSpec, Path]:
    path = resolve_path(ref)
    return parse_tune_spec(read_yaml(path), str(path), check_trials=check_trials), path

"""Strategy-search specs: a tuning spec whose space is conditional on the strategy.

`tune.strategies: [all]` (or ids and generation names: `[gen3, dals]`) replaces a tuning spec's one
`strategy` and its `space`: every trial first draws a strategy, then that strategy's own dimensions,
declared once in its `dalsopt` registry row (`dalsopt.search_space(strategy, regime)`). The search runs
on one dataset; its `seeds` give the objective (mean validation accuracy), and the top-k configurations
are trained again on `rerun_seeds`, fresh seeds the search never saw, for test accuracy mean +- std.
Every mistake is one `SpecError` line naming the file and the key, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator, model_validator

import dalsopt

from sweeps.spec.common import (
    MAX_SEED, MAX_TRIALS, Asha, Float, Int, SpecError, Strict, check_defaults, expand_strategies, first_line,
    kind_name, known_datasets, validation_line,
)
from sweeps.spec.credentials import no_credentials
from sweeps.spec.loader import read_yaml, resolve_path
from sweeps.spec.tune import JOURNAL_FILE, MAX_SEEDS_PER_TRIAL, Sampler, Study, TuneSpec
from sweeps.train.config import TrialConfig

STRATEGY = "strategy"  # the categorical every trial draws first
SEPARATOR = "."  # a strategy's own dimensions are named `<strategy>.<hp>` in the study


def param_name(strategy: str, hp: str) -> str:
    """A strategy's dimension as the study names it: `sgd.lr` and `adam.lr` are different
    dimensions (ranges, and TPE's model of them, per strategy)."""
    return f"{strategy}{SEPARATOR}{hp}"


def split_params(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A trial's sampled params -> (its strategy, that strategy's hyperparameters)."""
    strategy = params[STRATEGY]
    prefix = f"{strategy}{SEPARATOR}"
    return strategy, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class Search(Strict):
    """The `tune:` section of a search spec."""

    strategies: list[str] = Field(min_length=1, description="ids, generation names (gen1..gen6) or `all`")
    datasets: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
                        AfterValidator(known_datasets)] = Field(min_length=1, max_length=1,
                                                                description="the one dataset searched")
    trials: Int = Field(ge=1, le=MAX_TRIALS, description="budget: trials the search may start")
    minutes: Float | None = Field(None, gt=0, description="budget: wall minutes of the search phase")
    concurrency: Int = Field(2, ge=1)
    seeds: Int = Field(2, ge=1, le=MAX_SEEDS_PER_TRIAL, description="seeds 0..N-1 per trial: the objective is their mean")
    sampler: Sampler = Field(default_factory=Sampler)
    pruning: Asha = Field(default_factory=lambda: Asha(type="asha", grace_period=1, reduction_factor=3))
    defaults_first: bool = Field(True, description="the first trials are the strategies at their regime "
                                 "defaults (the grid's points), so ASHA's first look covers every strategy")
    top_k: Int = Field(3, ge=1, description="strategies (or configurations: rerun_per) trained again on fresh seeds")
    rerun_per: Literal["strategy", "configuration"] = Field(
        "strategy", description="the top-k are the k best strategies, each at its best settings (the "
        "verdict then says which strategy); configuration: the k best points, one strategy may fill them")
    rerun_overlap: bool = Field(True, description="re-run the best first, then only the runners-up whose "
                                "search value is within 2 standard errors of it (false: all top_k)")
    rerun_seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [100, 101, 102], min_length=2, max_length=MAX_SEEDS_PER_TRIAL)
    storage: Annotated[str | None, AfterValidator(no_credentials)] = Field(
        None, description=f"Optuna storage (default: {JOURNAL_FILE} beside the MLflow db)")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        presets = [s for s in v if "@" in s]
        if presets:
            base = presets[0].split("@", 1)[0]
            raise ValueError(f"{presets[0]!r} is a preset, one point of {base!r}'s space: name the strategy "
                             f"({base!r}) and the search samples its whole space")
        return expand_strategies(v)

    @field_validator("rerun_seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Search:
        shared = sorted(set(self.rerun_seeds) & set(range(self.seeds)))
        if shared:
            raise ValueError(f"rerun_seeds: {shared} are seeds the search trains on (0..{self.seeds - 1}); "
                             "the re-run needs fresh ones")
        if self.top_k > self.trials:
            raise ValueError(f"top_k: {self.top_k} is more than the {self.trials} trials of the budget")
        return self

    @property
    def rerun_unit(self) -> str:
        """What the top-k counts: strategies (`rerun_per: strategy`, when there are several to
        choose between), else configurations."""
        return "strategy" if self.rerun_per == "strategy" and len(self.strategies) > 1 else "configuration"

    @property
    def strategy(self) -> str:
        """What a study's records name as its strategy: the search, not one strategy."""
        return "search:" + ",".join(self.strategies)


class SearchSpec(TuneSpec):
    """A strategy-search spec: a `TuneSpec` (validation split by default, storage, tracking) whose
    `tune:` section is a `Search`."""

    tune: Search  # type: ignore[assignment]

    @model_validator(mode="after")
    def _spaces(self) -> SearchSpec:
        for s in self.tune.strategies:
            try:
                dalsopt.search_space(s, self.search_regime)
            except ValueError as e:
                raise ValueError(f"tune.strategies: {s}: {first_line(e)}") from None
        return self

    @property
    def search_regime(self) -> str:
        """The regime the dataset trains in (its own, or the spec's `regime:` setting): it picks
        each strategy's defaults and space."""
        return self.regime(self.dataset)

    def default_point(self, strategy: str) -> dict[str, Any]:
        """`strategy` at its regime defaults, as a study point (a default outside its range is left
        to the sampler)."""
        defaults = dalsopt.resolve(strategy, self.search_regime)
        point: dict[str, Any] = {STRATEGY: strategy}
        for name, d in self.space(strategy).items():
            v = defaults[name.split(SEPARATOR, 1)[1]]
            inside = v in d.choices if d.type == "categorical" else d.low <= v <= d.high
            if inside:
                point[name] = int(v) if d.type == "int" else v
        return point

    def space(self, strategy: str) -> dict[str, dalsopt.Dim]:
        """`strategy`'s dimensions as the study names them (`sgd.lr`)."""
        return {param_name(strategy, k): d for k, d in dalsopt.search_space(strategy, self.search_regime).items()}

    @property
    def dataset(self) -> str:
        return self.tune.datasets[0]

    def studies(self) -> list[SearchStudy]:
        return [SearchStudy(self, self.dataset, (self.dataset,))]

    def preset_name(self, strategy: str) -> str:
        """`<strategy>@<dataset>`, the dataset id made a preset name (`file:x.csv` -> `file-x.csv`)."""
        return f"{strategy}@{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.dataset).strip('-.') or 'data'}"


@dataclass(frozen=True)
class SearchStudy(Study):
    """The search's one study: a trial's config comes from the strategy it drew."""

    def configs(self, seed: int, hp: dict[str, Any]) -> list[TrialConfig]:
        strategy, own = split_params(hp)
        return [strategy_config(self.spec, d, strategy, seed, own) for d in self.datasets]


def strategy_config(spec: SearchSpec, dataset: str, strategy: str, seed: int, hp: dict[str, Any]) -> TrialConfig:
    """One trial of `strategy` on `dataset` with the spec's settings and `hp` on top."""
    kwargs = spec.settings(dataset).trial_kwargs()
    kwargs["hp"] = {**kwargs.get("hp", {}), **hp}
    return TrialConfig.create(strategy=strategy, dataset=dataset, seed=seed, **kwargs)


def parse_search_spec(data: Any, source: str = "<spec>") -> SearchSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (name, tune, ...), got {kind_name(data)}")
    tune = data.get("tune")
    if isinstance(tune, dict) and "strategy" in tune and "strategies" not in tune:
        raise SpecError(f"{source}: tune.strategy: a search names `strategies` (a list, `all` or generations); "
                        "one strategy is tuned with `dals tune run`")
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {validation_line(e)}") from None
    for s in spec.tune.strategies:  # every strategy at its defaults must build a trial here
        try:
            strategy_config(spec, spec.dataset, s, 0, {})
        except (ValueError, TypeError) as e:
            raise SpecError(f"{source}: defaults/datasets.{spec.dataset} (with {s}): {first_line(e)}") from None
    check_defaults(spec.defaults, spec.tune.strategies, spec.tune.datasets, source)
    return spec


def load_search_spec(ref: str | Path) -> tuple[SearchSpec, Path]:
    path = resolve_path(ref)
    return parse_search_spec(read_yaml(path), str(path)), path

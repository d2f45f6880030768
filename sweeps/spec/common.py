"""What sweep and tuning specs share: the catalogue of strategies and datasets, the strict pydantic
base, per-trial settings, resources, tracking and storage, and the one-line error conventions.

Nothing here imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      WrapValidator, model_validator)

import dalsopt

from sweeps.spec.credentials import no_credentials
from sweeps.train.config import TrialConfig, first_line
from sweeps.train.data import registry as datasets
from sweeps.train.hints import did_you_mean

METRICS = ("eval_accuracy", "eval_loss", "val_accuracy", "val_loss", "train_loss")
VAL_METRICS = ("val_accuracy", "val_loss")  # measured only where a dataset sets `validation`
DEFAULT_VALIDATION = 0.1  # what a tuning spec on a val_* metric holds out when a dataset sets none
DEFAULT_STORAGE = "dals-runs"
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
MAX_TRIALS = 10_000  # trials in a sweep, and per tuning study
MAX_SEED = 2**32 - 1  # numpy and Optuna seeds are 32-bit


class SpecError(ValueError):
    """A spec that cannot run; `str()` is one line: 'FILE: KEY: what is wrong; allowed: ...'."""


# ----------------------------------------------------------------------------- the catalogue


def strategy_generations(presets: bool = False) -> dict[str, int]:
    """Strategy id -> generation, in the registry's (generation) order; with ``presets``, the shipped
    ``strategy@preset`` names too (a preset has its base strategy's generation)."""
    return {name: dalsopt.GENERATIONS[name.split("@", 1)[0]] for name in dalsopt.names(presets=presets)}


def dataset_regime(dataset: str) -> str:
    """The dataset's regime; ValueError (listing the known ids) for an unknown dataset."""
    return datasets.default_regime(dataset)


def known_datasets(names: list[str]) -> list[str]:
    """Dataset ids, each checked (ValueError listing the known ones), duplicates dropped in order."""
    for name in names:
        dataset_regime(name)
    return list(dict.fromkeys(names))


def expand_strategies(items: list[str]) -> list[str]:
    """Ids, presets (`dals@scratch`), generation names (`gen3`) and `all` -> unique ids in registry
    order, each preset after its base strategy's place."""
    gens = strategy_generations(presets=True)
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(n for n in gens if "@" not in n)
        elif item.startswith("gen") and item[3:].isdigit() and int(item[3:]) in gens.values():
            chosen.update(n for n, g in gens.items() if g == int(item[3:]) and "@" not in n)
        elif item in gens:
            chosen.add(item)
        else:
            allowed = [*gens, *sorted({f"gen{g}" for g in gens.values()}), "all"]
            raise ValueError(f"unknown strategy {item!r}{did_you_mean(item, allowed)}; "
                             f"allowed: {', '.join(allowed)}")
    return sorted(chosen, key=lambda n: (list(gens).index(n.split("@", 1)[0]), n))


# ----------------------------------------------------------------------------- the models


@functools.lru_cache(maxsize=1)
def hyperparameter_names() -> frozenset[str]:
    """Every strategy's hyperparameter names (and `grouping`): keys that belong under `hp:`."""
    return frozenset({"grouping"}.union(*(dalsopt.resolve(n) for n in dalsopt.names())))


def _reject_unknown(data: Any, allowed: list[str]) -> Any:
    """An unknown key is an error that lists the allowed ones (pydantic's own message does not),
    with the key it was probably meant as, or, for a hyperparameter, where it goes (`hp:`)."""
    if isinstance(data, dict):
        unknown = [k for k in data if k not in allowed]
        if unknown:
            key = unknown[0]
            if "hp" in allowed and key in hyperparameter_names():
                hint = f" (a strategy hyperparameter: it goes under `hp:`, e.g. hp: {{{key}: ...}})"
            else:
                hint = did_you_mean(key, allowed)
            raise ValueError(f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
    return data


def _not_bool(v: Any) -> Any:
    """YAML's true/false would pass as 1/0 (pydantic's lax mode): a bool is never a count or a size."""
    if isinstance(v, bool):
        raise ValueError(f"Input should be a number, not {str(v).lower()}")
    return v


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def kind_name(v: Any) -> str:
    """How a YAML value reads in a message."""
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(v), type(v).__name__)


def _scalar(v: Any, handler: Any) -> Any:
    """One message for a value that is none of the union's types (pydantic names every member,
    with the member's type as a bogus last key of the path)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v}")
    if not isinstance(v, (bool, int, float, str)):
        raise ValueError(f"must be a number, bool or string, got {kind_name(v)}")
    return handler(v)


Scalar = Annotated[bool | int | float | str, WrapValidator(_scalar)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _reject_unknown(data, list(cls.model_fields))


def trial_setting_keys() -> list[str]:
    """What a spec may set per trial: the trial config's keys (the grid gives the rest)."""
    return [k for k in TrialConfig.keys() if k not in ("strategy", "dataset", "seed")]


class TrialSettings(BaseModel):
    """Per-trial settings: under `defaults` for every dataset, under `datasets.NAME` for one.

    The keys are `TrialConfig`'s (`TrialConfig.create` checks their values); `target` is the report's.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    hp: dict[str, Scalar] = Field(default_factory=dict, description="strategy hyperparameters")
    target: Float | None = Field(None, allow_inf_nan=False,
                                description="metric value for the epochs-to-target table")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _reject_unknown(data, [*trial_setting_keys(), "target"])

    def merged(self, over: TrialSettings | None) -> TrialSettings:
        """These settings with `over`'s set fields on top (hp merged key by key)."""
        if over is None:
            return self
        mine = self.model_dump(exclude_none=True)
        theirs = over.model_dump(exclude_none=True)
        hp = {**mine.pop("hp", {}), **theirs.pop("hp", {})}
        return TrialSettings(**{**mine, **theirs, "hp": hp})

    def trial_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `TrialConfig.create` (target is the report's)."""
        return self.model_dump(exclude_none=True, exclude={"target"})


def _gpu_share(v: float) -> float:
    """A trial's GPUs: a share of one (0.25 packs four trials per GPU) or whole GPUs (Ray places
    no trial on 1.5 GPUs)."""
    if v > 1 and not v.is_integer():
        raise ValueError(f"must be 0, a fraction of one GPU in (0, 1] (0.25 packs four trials per GPU) "
                         f"or a whole number of GPUs, got {v:g}")
    return v


class Resources(Strict):
    cpu: Float = Field(1.0, gt=0, description="CPUs per trial (fractions allowed)")
    gpu: Annotated[Float, AfterValidator(_gpu_share)] = Field(
        0.0, ge=0, description="GPUs per trial: 0, a share of one in (0, 1], or whole GPUs")
    max_concurrent: Int | None = Field(None, ge=1, description="default: as many as fit")


class Failure(Strict):
    max_retries: Int = Field(1, ge=-1, description="per trial; -1 retries forever")


class Asha(Strict):
    """Early stopping of poor trials (a sweep's `scheduler`, a study's `pruning`): one model, one
    factory (`sweeps.runner.ray_setup.scheduler`)."""

    type: Literal["none", "asha"] = "none"
    grace_period: Int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: Float = Field(2.0, gt=1)


DEFAULT_CHECKPOINT_S = 60.0  # a trial's checkpoints when the spec sets none: short epochs pay none


class Checkpointing(Strict):
    """When a running trial saves a checkpoint (Tune's checkpoint_frequency idea): after every N
    epochs and/or every S seconds, whichever comes first; always at its end. Neither given: every
    DEFAULT_CHECKPOINT_S seconds. A trial killed in between is redone from its last checkpoint."""

    every_epochs: Int | None = Field(None, ge=1, description="save after every N-th epoch")
    every_seconds: Float | None = Field(None, gt=0, description="save once S seconds have passed "
                                        f"since the last save (default {DEFAULT_CHECKPOINT_S:g})")

    def policy(self) -> dict[str, float | None]:
        """`experiment.resume.CheckpointEvery`'s arguments."""
        if self.every_epochs is None and self.every_seconds is None:
            return {"epochs": None, "seconds": DEFAULT_CHECKPOINT_S}
        return {"epochs": self.every_epochs, "seconds": self.every_seconds}


class Tracking(Strict):
    enabled: bool = True
    uri: Annotated[str | None, AfterValidator(no_credentials)] = Field(
        None, description=f"default: sqlite:///./{DEFAULT_TRACKING_DB}")
    experiment: str | None = Field(None, description="default: the spec's name")


class Workspace:
    """What sweep and tuning specs share: their hash and where their runs and tracking live."""

    @cached_property
    def digest(self) -> str:
        """A hash of what the spec does (not of comments or key order): resume needs it equal.
        How often trials checkpoint changes no result, so it is left out (and may change on resume)."""
        data = self.model_dump(mode="json", exclude={"checkpoint"})  # type: ignore[attr-defined]
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # Working-folder defaults, resolved when used so a spec file stays portable.
    def storage_path(self) -> str:
        storage: str = self.storage  # type: ignore[attr-defined]
        return storage if "://" in storage else str(Path(storage).resolve())

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"  # type: ignore[attr-defined]

    def experiment(self) -> str:
        return self.tracking.experiment or self.name  # type: ignore[attr-defined]


class SpecBase(Workspace, Strict):
    """The keys sweep and tuning specs share: name, metric, per-trial settings, resources, where
    runs and tracking live. `dataset_names()` are the datasets a `datasets:` section may name."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    metric: Literal[METRICS] = "eval_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"
    defaults: TrialSettings = Field(default_factory=TrialSettings)
    datasets: dict[str, TrialSettings] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    storage: Annotated[str, AfterValidator(no_credentials)] = Field(
        DEFAULT_STORAGE, description="Ray Tune storage path (local or URI)")

    def dataset_names(self) -> tuple[str, list[str]]:
        """(the section listing the datasets, its datasets)."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _overrides_listed(self) -> SpecBase:
        section, names = self.dataset_names()
        for name in self.datasets:
            if name not in names:
                raise ValueError(f"datasets: {name!r} is not in {section}; allowed: " + ", ".join(names))
        return self

    @model_validator(mode="after")
    def _validation_for_metric(self) -> SpecBase:
        """A val_* metric needs every dataset's validation split: without one it is never measured."""
        if self.metric in VAL_METRICS:
            missing = [d for d in self.dataset_names()[1] if not self.settings(d).model_dump().get("validation")]
            if missing:
                raise ValueError(f"metric: {self.metric} needs a validation split; set `validation` "
                                 f"(e.g. {DEFAULT_VALIDATION}) under defaults or datasets for "
                                 + ", ".join(missing))
        return self

    def settings(self, dataset: str) -> TrialSettings:
        return self.defaults.merged(self.datasets.get(dataset))

    def regime(self, dataset: str) -> str:
        """The dataset's regime, unless the spec trains it in the other one (`regime:` setting)."""
        return settings_regime(self.settings(dataset), dataset)


def settings_regime(settings: TrialSettings, dataset: str) -> str:
    """A `regime:` setting, else the dataset's. A non-string setting is left to `TrialConfig` to
    reject: here it would become a study's (unhashable) key."""
    regime = settings.model_dump().get("regime")
    return regime if isinstance(regime, str) and regime else dataset_regime(dataset)


# ----------------------------------------------------------------------------- messages


def path_key(part: Any) -> str:
    """A path element as a message shows it: plain keys bare, odd ones (spaces, newlines) quoted."""
    if isinstance(part, str) and not re.fullmatch(r"[\w@.:+\[\]-]+", part):
        return repr(part)
    return str(part)


def validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(path_key(p) for p in first["loc"])
    msg = (first["msg"].splitlines() or [""])[0]
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def check_data(configs: list[TrialConfig], section: str, source: str) -> None:
    """Each user dataset's files read once, as its trials will read them: a missing file or column
    is one line now, not a failed trial after Ray started."""
    seen = set()
    for cfg in configs:
        where = dict(eval_file=cfg.eval_file, text_column=cfg.text_column, text_column2=cfg.text_column2,
                     label_column=cfg.label_column)
        if (cfg.dataset, *where.values()) in seen:
            continue
        seen.add((cfg.dataset, *where.values()))
        try:
            datasets.check_readable(cfg.dataset, **where)
        except (ValueError, OSError) as e:
            raise SpecError(f"{source}: {section}: {cfg.dataset}: {first_line(e)}") from None


def check_defaults(defaults: TrialSettings, strategies: list[str], datasets: list[str],
                   source: str) -> None:
    """`defaults` that every dataset overrides must still fit some dataset: `epochs: 0` there is a
    mistake to report, not a dead value to ignore."""
    for strategy in strategies:
        errors = []
        for dataset in datasets:
            try:
                TrialConfig.create(strategy=strategy, dataset=dataset, seed=0, **defaults.trial_kwargs())
                break
            except (ValueError, TypeError) as e:
                errors.append(e)
        else:
            raise SpecError(f"{source}: defaults (with {strategy} on {datasets[0]}): "
                            f"{first_line(errors[0])}")

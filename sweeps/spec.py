"""Sweep specs: a YAML file -> a validated, strict `Spec`, and the trials it stands for.

Everything a sweep will do is decided here, before Ray starts: a typo'd key, an unknown strategy
or dataset, a bad range or a setting the trainable rejects is one `SpecError` line naming the
file, the key and what is allowed. Nothing in this module imports Ray or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator, field_validator,
    model_validator,
)

SPECS_DIR = Path(__file__).parent / "specs"
METRICS = ("eval_accuracy", "eval_loss", "train_loss")
DEFAULT_STORAGE = "dals-runs"
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
# Bounds that keep a bad spec a quick error rather than a hang or a huge allocation.
MAX_SPEC_BYTES = 256 * 1024  # the shipped specs are ~1 KiB
MAX_VALUES = 100_000  # values in a spec file, an alias counting each time it is used
MAX_DEPTH = 32  # nesting levels
MAX_TRIALS = 10_000  # trials in a sweep, and per tuning study
MAX_SEED = 2**32 - 1  # numpy and Optuna seeds are 32-bit


class SpecError(ValueError):
    """A spec that cannot run; `str()` is one line: 'FILE: KEY: what is wrong; allowed: ...'."""


# ----------------------------------------------------------------------------- the catalogue


def strategy_generations(presets: bool = False) -> dict[str, int]:
    """Strategy id -> generation, in the registry's (generation) order; with ``presets``, the shipped
    ``strategy@preset`` names too (a preset has its base strategy's generation)."""
    import dalsopt

    return {name: dalsopt.GENERATIONS[name.split("@", 1)[0]] for name in dalsopt.names(presets=presets)}


def dataset_regime(dataset: str) -> str:
    """The dataset's regime; ValueError (listing the known ids) for an unknown dataset."""
    from sweeps import data

    return data.default_regime(dataset)


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
            allowed = ", ".join([*gens, *sorted({f"gen{g}" for g in gens.values()}), "all"])
            raise ValueError(f"unknown strategy {item!r}; allowed: {allowed}")
    return sorted(chosen, key=lambda n: (list(gens).index(n.split("@", 1)[0]), n))


# ----------------------------------------------------------------------------- the model


def _reject_unknown(data: Any, allowed: list[str]) -> Any:
    """An unknown key is an error that lists the allowed ones (pydantic's own message does not)."""
    if isinstance(data, dict):
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return data


def _not_bool(v: Any) -> Any:
    """YAML's true/false would pass as 1/0 (pydantic's lax mode): a bool is never a count or a size."""
    if isinstance(v, bool):
        raise ValueError(f"Input should be a number, not {str(v).lower()}")
    return v


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def _kind(v: Any) -> str:
    """How a YAML value reads in a message."""
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(v), type(v).__name__)


def _scalar(v: Any, handler: Any) -> Any:
    """One message for a value that is none of the union's types (pydantic names every member,
    with the member's type as a bogus last key of the path)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v}")
    if not isinstance(v, (bool, int, float, str)):
        raise ValueError(f"must be a number, bool or string, got {_kind(v)}")
    return handler(v)


Scalar = Annotated[bool | int | float | str, WrapValidator(_scalar)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _reject_unknown(data, list(cls.model_fields))


def trial_setting_keys() -> list[str]:
    """What a spec may set per trial: the trainable's config keys (the grid gives the rest)."""
    from sweeps.trainable import CONFIG_KEYS

    return [k for k in CONFIG_KEYS if k not in ("strategy", "dataset", "seed")]


class TrialSettings(BaseModel):
    """Per-trial settings: under `defaults` for every dataset, under `datasets.NAME` for one.

    The keys are the trainable's (`trial_config` checks their values); `target` is the report's.
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
        """The keyword arguments for `sweeps.trainable.trial_config` (target is the report's)."""
        return self.model_dump(exclude_none=True, exclude={"target"})


class Grid(Strict):
    strategies: list[str] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    seeds: list[Int] = Field(min_length=1)

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
        for name in v:
            dataset_regime(name)
        return list(dict.fromkeys(v))

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        bad = next((s for s in v if not 0 <= s <= MAX_SEED), None)
        if bad is not None:
            raise ValueError(f"seeds must be >= 0 and <= {MAX_SEED}, got {bad}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _size(self) -> Grid:
        n = len(self.strategies) * len(self.datasets) * len(self.seeds)
        if n > MAX_TRIALS:
            raise ValueError(f"{len(self.strategies)} strategies x {len(self.datasets)} datasets x "
                             f"{len(self.seeds)} seeds = {n} trials; a sweep has at most {MAX_TRIALS}")
        return self


class Resources(Strict):
    cpu: Float = Field(1.0, gt=0, description="CPUs per trial (fractions allowed)")
    gpu: Float = Field(0.0, ge=0, description="GPUs per trial (fractions allowed)")
    max_concurrent: Int | None = Field(None, ge=1, description="default: as many as fit")


class Failure(Strict):
    max_retries: Int = Field(1, ge=-1, description="per trial; -1 retries forever")


class Scheduler(Strict):
    type: Literal["none", "asha"] = "none"
    grace_period: Int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: Float = Field(2.0, gt=1)


class Tracking(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description=f"default: sqlite:///./{DEFAULT_TRACKING_DB}")
    experiment: str | None = Field(None, description="default: the spec's name")


class Workspace:
    """What sweep and tuning specs share: their hash and where their runs and tracking live."""

    @cached_property
    def digest(self) -> str:
        """A hash of what the spec does (not of comments or key order): resume needs it equal."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)  # type: ignore[attr-defined]
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # Working-folder defaults, resolved when used so a spec file stays portable.
    def storage_path(self) -> str:
        storage: str = self.storage  # type: ignore[attr-defined]
        return storage if "://" in storage else str(Path(storage).resolve())

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"  # type: ignore[attr-defined]

    def experiment(self) -> str:
        return self.tracking.experiment or self.name  # type: ignore[attr-defined]


class Spec(Workspace, Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    metric: Literal[METRICS] = "eval_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"
    grid: Grid
    defaults: TrialSettings = Field(default_factory=TrialSettings)
    datasets: dict[str, TrialSettings] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    failure: Failure = Field(default_factory=Failure)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    tracking: Tracking = Field(default_factory=Tracking)
    storage: str = Field(DEFAULT_STORAGE, description="Ray Tune storage path (local or URI)")
    keep_checkpoints: Int = Field(1, ge=1, description="per running trial")
    keep_final_checkpoint: bool = Field(
        False, description="keep a finished trial's last checkpoint (a fine-tuned encoder's is "
                           "~270 MB: 270 of them fill a disk)")

    @model_validator(mode="after")
    def _overrides_in_grid(self) -> Spec:
        for name in self.datasets:
            if name not in self.grid.datasets:
                raise ValueError(
                    f"datasets: {name!r} is not in grid.datasets; allowed: "
                    + ", ".join(self.grid.datasets)
                )
        return self

    def settings(self, dataset: str) -> TrialSettings:
        return self.defaults.merged(self.datasets.get(dataset))

    def regime(self, dataset: str) -> str:
        """The dataset's regime, unless the spec trains it in the other one (`regime:` setting)."""
        return settings_regime(self.settings(dataset), dataset)

    def trials(self) -> list[TrialSpec]:
        """The grid in a stable order: dataset, then strategy (registry order), then seed."""
        gens = strategy_generations(presets=True)
        return [
            TrialSpec(s, d, seed, gens[s], self.regime(d), self.settings(d))
            for d in self.grid.datasets
            for s in self.grid.strategies
            for seed in self.grid.seeds
        ]

    def targets(self) -> dict[str, float]:
        """Dataset -> target metric value, for datasets that set one."""
        return {d: t for d in self.grid.datasets if (t := self.settings(d).target) is not None}


def settings_regime(settings: TrialSettings, dataset: str) -> str:
    """A `regime:` setting, else the dataset's. A non-string setting is left to `trial_config` to
    reject: here it would become a study's (unhashable) key."""
    regime = settings.model_dump().get("regime")
    return regime if isinstance(regime, str) and regime else dataset_regime(dataset)


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

    def config(self) -> dict[str, Any]:
        """The trainable's full, validated config (raises ValueError on a setting it rejects)."""
        from sweeps.trainable import trial_config

        return trial_config(
            strategy=self.strategy, dataset=self.dataset, seed=self.seed,
            **self.settings.trial_kwargs(),
        )


# ----------------------------------------------------------------------------- loading


def resolve_path(ref: str | Path) -> Path:
    """A spec path, or the bare name of a shipped spec (`quick` -> sweeps/specs/quick.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir():
        raise SpecError(f"{ref}: a folder, not a spec file")
    shipped = SPECS_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else ref}.yaml"
    if shipped.exists() and path.parent == Path("."):
        return shipped
    names = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
    raise SpecError(f"{ref}: no such spec file; shipped specs: {names}")


def _key(part: Any) -> str:
    """A path element as a message shows it: plain keys bare, odd ones (spaces, newlines) quoted."""
    if isinstance(part, str) and not re.fullmatch(r"[\w@.:+\[\]-]+", part):
        return repr(part)
    return str(part)


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(_key(p) for p in first["loc"])
    msg = (first["msg"].splitlines() or [""])[0]
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse_spec(data: Any, source: str = "<spec>", *, check_trials: bool = True) -> Spec:
    """A mapping -> Spec; with `check_trials`, also every trial's config via the trainable."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (name, grid, ...), got {_kind(data)}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {_one_line(e)}") from None
    if check_trials:
        # A config depends on the seed only through its range, which Grid checked: one seed will do.
        for trial in spec.trials()[:: len(spec.grid.seeds)]:
            try:
                trial.config()
            except (ValueError, TypeError) as e:
                where = _culprit(spec, trial)
                raise SpecError(f"{source}: {where} (trial {trial.key}): {first_line(e)}") from None
        check_defaults(spec.defaults, spec.grid.strategies, spec.grid.datasets, source)
    return spec


def check_defaults(defaults: TrialSettings, strategies: list[str], datasets: list[str],
                   source: str) -> None:
    """`defaults` that every dataset overrides must still fit some dataset: `epochs: 0` there is a
    mistake to report, not a dead value to ignore."""
    from sweeps.trainable import trial_config

    for strategy in strategies:
        errors = []
        for dataset in datasets:
            try:
                trial_config(strategy=strategy, dataset=dataset, seed=0, **defaults.trial_kwargs())
                break
            except (ValueError, TypeError) as e:
                errors.append(e)
        else:
            raise SpecError(f"{source}: defaults (with {strategy} on {datasets[0]}): "
                            f"{first_line(errors[0])}")


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (an error is one line, whatever raised it)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _culprit(spec: Spec, trial: TrialSpec) -> str:
    """Which section a setting the trainable rejected came from: the dataset's or `defaults`."""
    if trial.dataset not in spec.datasets:
        return "defaults"
    try:
        replace(trial, settings=spec.defaults).config()
    except (ValueError, TypeError):
        return "defaults"
    return f"datasets.{trial.dataset}"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml's safe loader (libyaml's when built: 7x faster on a big file), refusing duplicate keys:
    a key given twice would otherwise silently take its last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-3` as a string; YAML 1.2 and every user read it as a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data with the spec loader (safe, no duplicate keys, `1e-3` a float), or one
    SpecError line naming ``source``."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise SpecError(f"{source}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: not valid YAML: nested too deeply") from None
    _check_shape(data, source)
    return data


def read_yaml(path: Path) -> Any:
    """A spec file's data, or one SpecError line: unreadable, too big, not UTF-8, not YAML (duplicate
    keys included), or too large or deep once aliases are expanded."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the file: {e.strerror or first_line(e)}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: over {MAX_SPEC_BYTES // 1024} KiB; a spec file is smaller than that")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return parse_yaml(text, str(path))


def _check_shape(data: Any, source: str) -> None:
    """Bound the values and the nesting before anything walks them: a few aliases can make a small
    file stand for billions of values, and deep nesting exhausts the stack."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    count = 0
    while stack:
        value, loc, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError(f"{source}: {_section(loc)}: over {MAX_VALUES} values in the spec "
                            "(an alias counts each time it is used)")
        if depth > MAX_DEPTH:
            raise SpecError(f"{source}: {_section(loc)}: nested over {MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((v, (*loc, k), depth + 1) for k, v in items)


def _section(loc: tuple) -> str:
    """Where in the file a value sits, for a message: its first few keys, up to a list index."""
    keys: list[str] = []
    for part in loc[:4]:
        if not isinstance(part, str):
            break
        keys.append(_key(part))
    return ".".join(keys) or "the file"


def load_spec(ref: str | Path, *, check_trials: bool = True) -> tuple[Spec, Path]:
    """Read, parse and validate a spec file; returns the spec and the file it came from."""
    path = resolve_path(ref)
    return parse_spec(read_yaml(path), str(path), check_trials=check_trials), path

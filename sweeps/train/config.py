"""A trial's configuration: one typed `TrialConfig`, validated once where it enters the service.

Specs, the `dals train` flags and the Ray trainable all build trials from this one class: its fields
are the keys a spec may set per trial and the flags of `dals train`; `TrialConfig.create` fills in the
dataset's defaults and checks every value (one-line `ValueError`s); `to_dict` / `restore` carry a
validated config across Ray's process boundary without checking it again. The hyperparameters a
trial's strategy runs with come from one place, `hyperparameters()`, for training and for MLflow.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import dalsopt
from dalsopt import presets

from sweeps.train import models, precision
from sweeps.train.data import registry as datasets
from sweeps.train.hints import did_you_mean

REGIMES = ("scratch", "finetune")
REGIME_MODEL = {"scratch": "textcnn", "finetune": models.MINILM}
# dalsopt.make(regime="finetune") holds the paper's fine-tuning rates (SGD family 5e-4, Adam family 5e-5);
# the paper used 3e-4 / 3e-5 on TREC-6, i.e. 0.6 x those, applied here unless the config sets lr.
TREC_FINETUNE_LR_SCALE = 0.6


def _row(epochs: int, batch_size: int, max_length: int | None, model: str | None) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": batch_size, "max_length": max_length, "model": model}


# The authors' code's settings (STRATEGIES.md), full data; CPU subsets come from the caller.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": _row(80, 128, None, "mlp"),
    "synthetic-gmm": _row(80, 64, None, "mlp:128,128"),
    "cifar10": _row(50, 128, None, "cnn"),
    "trec6": _row(10, 32, 128, models.MINILM),
    "trec6-scratch": _row(10, 64, 64, "textcnn"),
    "rte": _row(10, 32, 128, models.MINILM),
    "imdb": _row(5, 32, 256, models.MINILM),
    # user data (file:PATH, hf:ID): the model follows the regime when not given
    "file:": _row(5, 32, 128, None),
    "hf:": _row(5, 32, 128, None),
}


def _help(text: str, **flag: Any) -> dict[str, Any]:
    """Field metadata: the `dals train` flag's help (and argparse extras such as `choices`)."""
    return {"help": text, **flag}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial depends on (strategy x dataset x seed, its budget, data and model)."""

    strategy: str = field(default="dals", metadata=_help("a dalsopt strategy id or preset (strategy@preset)"))
    dataset: str = field(default="synthetic", metadata=_help(
        "synthetic, synthetic-gmm, cifar10, trec6, trec6-scratch, rte, imdb, file:PATH or hf:ID[:CONFIG]"))
    seed: int = field(default=0, metadata=_help("seeds the model init, batch order and train subset"))
    epochs: int = field(default=0, metadata=_help("epochs to train (default: the dataset's)"))
    batch_size: int = field(default=0, metadata=_help("examples per optimizer step (default: the dataset's)"))
    hp: dict[str, Any] = field(default_factory=dict, metadata=_help("strategy hyperparameters"))
    max_train: int | None = field(default=None, metadata=_help("stratified seeded subset of the train split"))
    max_eval: int | None = field(default=None, metadata=_help("stratified subset of the eval split"))
    validation: float | None = field(default=None, metadata=_help(
        "fraction of the train split held out for val_accuracy/val_loss (stratified, the same rows "
        "for every seed; max_train draws from the rest); 0 or unset: off"))
    max_length: int | None = field(default=None, metadata=_help("tokens per text (truncation)"))
    model: str | None = field(default=None, metadata=_help(
        "mlp[:H1,H2..], cnn, resnet18, textcnn, bilstm, minilm, a Hugging Face id or folder"))
    regime: str | None = field(default=None, metadata=_help("scratch or finetune (default: the dataset's)",
                                                            choices=REGIMES))
    data_dir: str | None = field(default=None, metadata=_help(
        "folder holding the dataset folders (trec/, rte/, imdb/, cifar-10-batches-py/)"))
    eval_file: str | None = field(default=None, metadata=_help(
        "file: datasets: a separate eval table (hf: the eval split's name)"))
    text_column: str | None = field(default=None, metadata=_help("file:/hf: datasets: text column (default: text)"))
    text_column2: str | None = field(default=None, metadata=_help(
        "file:/hf: datasets: second text column, for sentence pairs"))
    label_column: str | None = field(default=None, metadata=_help(
        "file:/hf: datasets: label column (default: label)"))
    augment: bool = field(default=False, metadata=_help("random crop + flip (image datasets)"))
    device: str | None = field(default=None, metadata=_help("cpu, cuda[:N] or mps (default: cuda if available)"))
    precision: str | None = field(default=None, metadata=_help(
        "autocast dtype of forward and loss; fp16 with loss scaling (default: bf16 when fine-tuning on a "
        "CUDA device with bf16, else fp32)", choices=precision.PRECISIONS))
    compile: bool = field(default=False, metadata=_help("torch.compile the model (the first steps compile it)"))

    # ------------------------------------------------------------------ building

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def create(cls, **overrides: Any) -> TrialConfig:
        """A full, validated config: the dataset's defaults filled in, then `overrides` (None = unset).

        Unknown keys, wrong types and values that do not fit the dataset are one-line `ValueError`s.
        """
        unknown = sorted(set(overrides) - set(cls.keys()))
        if unknown:
            raise ValueError(f"unknown trial config key(s) {', '.join(unknown)}; known: {', '.join(cls.keys())}")
        given = {k: v for k, v in overrides.items() if v is not None}
        dataset = given.get("dataset", "synthetic")
        datasets.check_id(dataset)
        cfg: dict[str, Any] = {f.name: (f.default_factory() if callable(f.default_factory) else f.default)
                               for f in fields(cls)}
        cfg.update(dataset_defaults(dataset))
        cfg.update(given)
        return cls(**_validated(cfg, given))

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> TrialConfig:
        """A config that `to_dict` wrote (already validated): rebuilt, not checked again."""
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise ValueError(f"not a trial config: unknown key(s) {', '.join(unknown)}")
        return cls(**{**data, "hp": dict(data.get("hp") or {})})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): what Ray carries, checkpoints compare and MLflow flattens."""
        return asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        """This config with `changes`, validated again (a new dataset brings its own defaults only
        where the change does not set them)."""
        return TrialConfig.create(**{**self.to_dict(), **changes})

    # ------------------------------------------------------------------ derived facts

    @property
    def kind(self) -> str:
        return datasets.kind_of(self.dataset)

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter the trial's strategy runs with: its regime's defaults under `hp`.
        The one source for training, MLflow's `hp.*` params and exported presets."""
        return dalsopt.resolve(self.strategy, self.regime, **strategy_hp(self.hp))

    def comparable(self) -> dict[str, Any]:
        """The config without where it runs (a trial may resume on another device)."""
        return {k: v for k, v in self.to_dict().items() if k != "device"}


# ---------------------------------------------------------------------------- defaults and checks


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The dataset's row of DATASET_DEFAULTS (`file:...` and `hf:...` share their prefix's row)."""
    datasets.check_id(dataset)
    return dict(DATASET_DEFAULTS[dataset if dataset in DATASET_DEFAULTS else dataset.split(":", 1)[0] + ":"])


def dataset_hp(strategy: str, dataset: str, regime: str) -> dict[str, float]:
    """Dataset-specific defaults on top of dalsopt's per-regime ones (only TREC-6 fine-tuning has any).
    A preset that sets its own (tuned) rate keeps it."""
    if "@" in strategy and "lr" in presets.load(strategy):
        return {}
    if regime == "finetune" and dataset in ("trec6", "trec6-scratch"):
        return {"lr": dalsopt.resolve(strategy, "finetune")["lr"] * TREC_FINETUNE_LR_SCALE}
    return {}


USER_ONLY = ("eval_file", "text_column", "text_column2", "label_column")
STRINGS = ("data_dir", "eval_file", "text_column", "text_column2", "label_column", "device")


def _validated(cfg: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`cfg` checked and completed (regime, model, max_length, hp); one-line ValueErrors."""
    dataset = cfg["dataset"]
    _check_strategy(cfg["strategy"])
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise ValueError(f"seed must be a non-negative integer, got {cfg['seed']!r}")
    for key in ("epochs", "batch_size"):
        _positive_int(cfg, key)
    for key in ("max_train", "max_eval", "max_length"):
        _positive_int(cfg, key, optional=True)
    cfg["validation"] = _fraction(cfg["validation"])
    kind = datasets.kind_of(dataset)
    default_regime = datasets.default_regime(dataset)
    regime = cfg["regime"] or _regime_from_model(given.get("model"), kind) or default_regime
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    if kind != "text" and regime != "scratch":
        raise ValueError(f"dataset {dataset!r} only trains from scratch (regime 'scratch')")
    cfg["regime"] = regime
    if kind == "text" and cfg["max_length"] is None:
        cfg["max_length"] = 128
    if "model" not in given and (cfg["model"] is None or regime != default_regime):
        cfg["model"] = REGIME_MODEL[regime] if kind == "text" else cfg["model"]
    if not isinstance(cfg["model"], str):
        raise ValueError(f"model must be a string, got {cfg['model']!r}")
    models.check_model(cfg["model"], kind, regime)
    if not datasets.is_user_dataset(dataset):
        extra = [k for k in USER_ONLY if cfg[k] is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} only apply to file:PATH or hf:ID datasets, not {dataset!r}")
    for key in STRINGS:
        if cfg[key] is not None and not isinstance(cfg[key], (str, os.PathLike)):
            raise ValueError(f"{key} must be a string, got {cfg[key]!r}")
    if cfg["data_dir"] is not None:  # relative to where the sweep starts (Ray runs trials elsewhere)
        cfg["data_dir"] = str(Path(cfg["data_dir"]).expanduser().resolve())
    for key in ("augment", "compile"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key} must be true or false, got {cfg[key]!r}")
    precision.check(cfg["precision"])
    if cfg["augment"] and kind != "image":
        raise ValueError(f"augment applies to image datasets only, not {dataset!r}")
    if cfg["device"] is not None and not str(cfg["device"]).startswith(("cpu", "cuda", "mps")):
        raise ValueError(f"device must be cpu, cuda[:N] or mps, got {cfg['device']!r}")
    cfg["hp"] = _check_hp(cfg)
    return cfg


def _positive_int(cfg: dict, key: str, optional: bool = False) -> None:
    v = cfg[key]
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{key} must be a positive integer, got {v!r}")


def _fraction(v: Any) -> float | None:
    """A validation fraction in (0, 0.5] (more would leave less to train on than to check on);
    0 and None both mean off (None, so the two configs are one)."""
    if v is None or (v == 0 and not isinstance(v, bool)):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 0.5:
        raise ValueError(f"validation must be a fraction in (0, 0.5] (0 = off), got {v!r}")
    return float(v)


def _regime_from_model(model: Any, kind: str) -> str | None:
    """A text model named without a regime implies it: textcnn/bilstm train from scratch, others fine-tune."""
    if kind != "text" or not isinstance(model, str):
        return None
    return "scratch" if model in models.SCRATCH_TEXT else "finetune"


def _check_strategy(name: Any) -> None:
    known = list(dalsopt.names(presets=True))  # tuned presets ("dals@trec6") are strategies too
    if name not in known:
        raise ValueError(f"unknown strategy {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")


# `hp` keys that are options of `dalsopt.make`, not hyperparameters (`dalsopt.resolve` takes none):
# they reach `make` with the rest of `hp` and are checked here
BUILD_OPTIONS = ("grouping",)


def strategy_hp(hp: Mapping[str, Any]) -> dict[str, Any]:
    """`hp` without the build options: what `dalsopt.resolve` takes."""
    return {k: v for k, v in hp.items() if k not in BUILD_OPTIONS}


def _check_grouping(value: Any) -> None:
    """`grouping`: "auto", "children" or a list of parameter-name prefixes (dalsopt.groups)."""
    if value in ("auto", "children"):
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) and p for p in value):
        return
    raise ValueError(f"hp grouping must be 'auto', 'children' or a list of parameter-name prefixes, "
                     f"got {value!r}")


def _check_hp(cfg: dict) -> dict[str, Any]:
    """Dataset defaults under the given hp; each value a number/bool/str/list; dalsopt vets names and ranges."""
    hp = cfg["hp"]
    if not isinstance(hp, Mapping) or not all(isinstance(k, str) for k in hp):
        raise ValueError(f"hp must be a mapping of names to values, got {hp!r}")
    for k, v in hp.items():
        if not isinstance(v, (int, float, bool, str, list, tuple)):
            raise ValueError(f"hp {k} must be a number, bool, string or list, got {v!r}")
    full = {**dataset_hp(cfg["strategy"], cfg["dataset"], cfg["regime"]), **hp}
    if "grouping" in full:
        _check_grouping(full["grouping"])
    try:  # bad names and values fail now, not minutes into data loading
        dalsopt.resolve(cfg["strategy"], cfg["regime"], **strategy_hp(full))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad hyperparameters for {cfg['strategy']}: {first_line(exc)}") from None
    return full


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (an error is one line, whatever raised it)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

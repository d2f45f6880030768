"""Datasets per regime behind one small interface: ``load(dataset_id, split, ...) -> Split``.

Built-in ids are the paper's datasets (``synthetic``, ``synthetic-gmm``, ``cifar10``, ``trec6``,
``trec6-scratch``, ``rte``, ``imdb``); ``file:PATH`` names a user's local table and ``hf:ID[:CONFIG]`` a
Hugging Face dataset. Raw data only: tokenisation lives in :mod:`sweeps.train.data.text`, so it runs once per load.
Every loader fails with a one-line ``ValueError``/``FileNotFoundError`` that says what to do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sweeps.train.data import sources
from sweeps.train.hints import did_you_mean
from sweeps.train.data.split import Split, subset

PACKAGE_DATA = Path(__file__).resolve().parents[2] / "data"  # the shipped files: sweeps/data/
SPLITS = ("train", "eval")
USER_PREFIXES = ("file:", "hf:")


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in id is: its kind, default regime and loader ``(split, root) -> Split``."""

    kind: str
    regime: str
    loader: Callable[..., Split]
    about: str


def _cifar10(split: str, root: Path) -> Split:
    # Not shipped (170 MB): without --data-dir / $DALS_DATA_DIR it lives (or downloads) in the user cache.
    return sources.cifar10(split, Path.home() / ".cache" / "dals" if root == PACKAGE_DATA else root)


def _synthetic(split: str, root: Path) -> Split:
    return sources.synthetic(split)


def _gmm(split: str, root: Path) -> Split:
    return sources.synthetic_gmm(split)


DATASETS: dict[str, DatasetInfo] = {
    "synthetic": DatasetInfo("tensor", "scratch", _synthetic, "10k x 20-d, label = sum(x[:5]) > 0 (authors' code)"),
    "synthetic-gmm": DatasetInfo("tensor", "scratch", _gmm, "10-class Gaussian mixture, 8000 x 64 (paper text)"),
    "cifar10": DatasetInfo("image", "scratch", _cifar10, "CIFAR-10, cifar-10-batches-py format"),
    "trec6": DatasetInfo("text", "finetune", sources.trec, "TREC-6 question classification"),
    "trec6-scratch": DatasetInfo("text", "scratch", sources.trec, "TREC-6, model trained from scratch"),
    "rte": DatasetInfo("text", "finetune", sources.rte, "GLUE RTE sentence pairs (dev = eval)"),
    "imdb": DatasetInfo("text", "finetune", sources.imdb, "IMDb reviews, full 25k/25k"),
}


def names() -> list[str]:
    """Built-in dataset ids (user data: ``file:PATH`` or ``hf:ID[:CONFIG]``)."""
    return list(DATASETS)


def is_user_dataset(dataset_id: str) -> bool:
    return dataset_id.startswith(USER_PREFIXES)


def check_id(dataset_id: str) -> None:
    """Raise a one-line ValueError for an unknown dataset id."""
    if not isinstance(dataset_id, str) or not (dataset_id in DATASETS or is_user_dataset(dataset_id)):
        raise ValueError(
            f"unknown dataset {dataset_id!r}{did_you_mean(dataset_id, DATASETS)}; "
            f"known: {', '.join(DATASETS)}, or file:PATH, or hf:ID[:CONFIG]"
        )
    if is_user_dataset(dataset_id) and not dataset_id.split(":", 1)[1]:
        raise ValueError(f"dataset {dataset_id!r} names no file or Hugging Face id after the prefix")


def kind_of(dataset_id: str) -> str:
    check_id(dataset_id)
    return DATASETS[dataset_id].kind if dataset_id in DATASETS else "text"


def default_regime(dataset_id: str) -> str:
    check_id(dataset_id)
    return DATASETS[dataset_id].regime if dataset_id in DATASETS else "finetune"


def check_readable(dataset_id: str, *, eval_file: str | None = None, text_column: str | None = None,
                   text_column2: str | None = None, label_column: str | None = None) -> None:
    """Read a ``file:`` table (and its eval file) or a local ``hf:`` folder as a trial will, so a
    missing file or column is a spec error before anything starts. Hub ids are left to the trials:
    checking them needs the network."""
    if not is_user_dataset(dataset_id):
        return
    if dataset_id.startswith("hf:") and not sources.is_local_folder(dataset_id[3:]):
        return
    for split in SPLITS:
        sources.user_dataset(dataset_id, split, eval_file=eval_file, text_column=text_column,
                             text_column2=text_column2, label_column=label_column)


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """Where dataset folders live: ``data_dir``, else $DALS_DATA_DIR, else the copies shipped in the package."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("DALS_DATA_DIR")
    return Path(env).expanduser() if env else PACKAGE_DATA


def load(
    dataset_id: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    max_n: int | None = None,
    seed: int = 0,
    eval_file: str | None = None,
    text_column: str | None = None,
    text_column2: str | None = None,
    label_column: str | None = None,
) -> Split:
    """Load ``split`` ("train" or "eval") of a dataset, optionally a stratified seeded subset of ``max_n``."""
    check_id(dataset_id)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if max_n is not None and (not isinstance(max_n, int) or max_n < 1):
        raise ValueError(f"max_train/max_eval must be a positive integer, got {max_n!r}")
    if dataset_id in DATASETS:
        data = DATASETS[dataset_id].loader(split, data_root(data_dir))
    else:
        data = sources.user_dataset(
            dataset_id, split, eval_file=eval_file, text_column=text_column,
            text_column2=text_column2, label_column=label_column,
        )
    return subset(data, max_n, seed)

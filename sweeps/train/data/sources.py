"""Real loaders behind :func:`sweeps.data.load`: generated tasks, CIFAR-10 batches, TREC/RTE/IMDb files,
user tables (``file:``) and Hugging Face datasets (``hf:``).

Each returns a :class:`~sweeps.split.Split`. Missing files without network access are a one-line
``FileNotFoundError`` naming the folder and the files to put there.
"""
from __future__ import annotations

import csv
import functools
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import torch

from sweeps.train.data.split import Split, holdout

OFFLINE_VARS = ("DALS_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
SYNTHETIC_SEED = 2604  # the data is fixed; trial seeds vary init and order only
USER_SPLIT_SEED = 0  # fixed so every trial seed evaluates on the same held-out rows
USER_EVAL_FRACTION = 0.2

TREC_LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # Hugging Face CogComp/trec coarse order
RTE_LABELS = ("entailment", "not_entailment")  # GLUE order (0 = entailment)
IMDB_LABELS = ("neg", "pos")
CIFAR_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def offline() -> bool:
    """True when the environment forbids network access (any of OFFLINE_VARS set to 1/true)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARS)


@functools.lru_cache(maxsize=None)
def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers at all (checked once per process), so a machine without network fails fast."""
    if offline():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- generated tasks -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _synthetic_all() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    x = torch.randn(10_000, 20, generator=g)
    return x, (x[:, :5].sum(dim=1) > 0).long()


def synthetic(split: str) -> Split:
    """The authors' code's task: 10k x 20 Gaussian inputs, label = sum(x[:5]) > 0; 8000 train / 2000 eval.

    The MLP keeps 10 outputs as in their code; only classes 0 and 1 occur.
    """
    x, y = _synthetic_all()
    sl = slice(0, 8000) if split == "train" else slice(8000, None)
    return Split(y=y[sl], x=x[sl], num_classes=10, label_names=tuple(map(str, range(10))), kind="tensor")


@functools.lru_cache(maxsize=None)
def _gmm_all() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SYNTHETIC_SEED + 1)
    centres = 0.5 * torch.randn(10, 64, generator=g)
    y = torch.arange(8000) % 10
    y = y[torch.randperm(8000, generator=g)]
    return centres[y] + torch.randn(8000, 64, generator=g), y


def synthetic_gmm(split: str) -> Split:
    """The paper text's task: 10-class Gaussian mixture (centres ~ N(0, 0.25 I), unit noise), 6400 / 1600."""
    x, y = _gmm_all()
    sl = slice(0, 6400) if split == "train" else slice(6400, None)
    return Split(y=y[sl], x=x[sl], num_classes=10, label_names=tuple(map(str, range(10))), kind="tensor")


# --- CIFAR-10 --------------------------------------------------------------------------------------------

CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "eval": ["test_batch"]}


def _cifar_folder(root: Path) -> Path:
    for cand in (root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py", root):
        if (cand / "test_batch").exists() or (cand / "data_batch_1").exists():
            return cand
    return root / "cifar-10-batches-py"


def cifar10(split: str, root: Path) -> Split:
    """CIFAR-10 from the python-pickle batches (uint8 images; normalised per batch by the trainer).

    Downloads through torchvision only when the files are missing and the network is allowed.
    """
    folder = _cifar_folder(root)
    missing = [f for f in CIFAR_FILES[split] if not (folder / f).exists()]
    if missing:
        if not reachable("www.cs.toronto.edu"):
            raise FileNotFoundError(
                f"CIFAR-10 not found: put cifar-10-batches-py ({', '.join(missing)}) in {folder.parent} "
                "(or pass --data-dir), or allow network access to download it"
            )
        _download_cifar(folder.parent)
        folder = folder.parent / "cifar-10-batches-py"
    xs, ys = [], []
    for name in CIFAR_FILES[split]:
        try:
            with open(folder / name, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data, labels = batch[b"data"], batch[b"labels"]
        except (OSError, pickle.UnpicklingError, KeyError, EOFError) as exc:
            raise ValueError(f"{folder / name} is not a CIFAR-10 python batch ({_first_line(exc)})") from None
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    y = torch.from_numpy(np.concatenate(ys))
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"CIFAR-10 labels in {folder} must be 0..9")
    return Split(y=y, x=torch.from_numpy(np.concatenate(xs)), num_classes=10, label_names=CIFAR_LABELS, kind="image")


def _download_cifar(root: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # no network, disk full, ...: one line, where to put the files
        raise FileNotFoundError(
            f"CIFAR-10 not found in {root} and the download failed ({_first_line(exc)}); "
            "put cifar-10-batches-py there or pass --data-dir"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


# --- text datasets shipped as files ----------------------------------------------------------------------

def _need(folder: Path, files: list[str], what: str, hf: str) -> bool:
    """True if all files exist; else a one-line error, or False when Hugging Face may be tried instead."""
    missing = [f for f in files if not (folder / f).exists()]
    if not missing:
        return True
    if not reachable("huggingface.co"):
        raise FileNotFoundError(
            f"{what} files not found: put {', '.join(missing)} in {folder} (copies and provenance ship in "
            f"sweeps/data/), pass --data-dir, or allow network access to use {hf}"
        )
    return False


@functools.lru_cache(maxsize=8)
def _trec_file(path: str) -> tuple[tuple[str, ...], torch.Tensor]:
    texts, labels = [], []
    with open(path, encoding="latin-1") as fh:
        for n, line in enumerate(fh, 1):
            head, _, text = line.rstrip("\n").partition(" ")
            coarse = head.split(":", 1)[0]
            if coarse not in TREC_LABELS or not text:
                raise ValueError(f"{path}:{n}: not a TREC line 'COARSE:fine question'")
            texts.append(text)
            labels.append(TREC_LABELS.index(coarse))
    return tuple(texts), torch.tensor(labels, dtype=torch.long)


def trec(split: str, root: Path) -> Split:
    """TREC-6 (coarse labels): train_5500.label for training, TREC_10.label for evaluation."""
    folder = root / "trec"
    name = "train_5500.label" if split == "train" else "TREC_10.label"
    if not _need(folder, [name], "TREC-6", "hf:CogComp/trec"):
        return hf_dataset("CogComp/trec", None, split, text_column="text", label_column="coarse_label",
                          eval_split="test")
    texts, y = _trec_file(str(folder / name))
    return Split(y=y, texts=texts, num_classes=6, label_names=TREC_LABELS, kind="text")


@functools.lru_cache(maxsize=8)
def _rte_file(path: str) -> tuple[tuple[str, ...], tuple[str, ...], torch.Tensor]:
    s1, s2, labels = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header != ["index", "sentence1", "sentence2", "label"]:
            raise ValueError(f"{path}: expected the GLUE RTE header 'index sentence1 sentence2 label'")
        for n, row in enumerate(rows, 2):
            if len(row) != 4 or row[3] not in RTE_LABELS:
                raise ValueError(f"{path}:{n}: expected 4 tab-separated fields ending in a RTE label")
            s1.append(row[1])
            s2.append(row[2])
            labels.append(RTE_LABELS.index(row[3]))
    return tuple(s1), tuple(s2), torch.tensor(labels, dtype=torch.long)


def rte(split: str, root: Path) -> Split:
    """GLUE RTE sentence pairs: train.tsv for training, dev.tsv for evaluation (test labels are private)."""
    folder = root / "rte"
    name = "train.tsv" if split == "train" else "dev.tsv"
    if not _need(folder, [name], "RTE", "hf:nyu-mll/glue:rte"):
        return hf_dataset("nyu-mll/glue", "rte", split, text_column="sentence1", text_column2="sentence2",
                          label_column="label", eval_split="validation")
    s1, s2, y = _rte_file(str(folder / name))
    return Split(y=y, texts=s1, texts2=s2, num_classes=2, label_names=RTE_LABELS, kind="text")


@functools.lru_cache(maxsize=4)
def _imdb_file(path: str) -> tuple[tuple[str, ...], torch.Tensor]:
    import pandas as pd

    frame = pd.read_csv(path, usecols=["label", "text"])
    return tuple(frame["text"].astype(str)), torch.tensor(frame["label"].to_numpy(), dtype=torch.long)


def imdb(split: str, root: Path) -> Split:
    """IMDb: the full original 25k train / 25k test splits (subset with max_train / max_eval)."""
    folder = root / "imdb"
    name = "train.csv.gz" if split == "train" else "test.csv.gz"
    if not _need(folder, [name], "IMDb", "hf:stanfordnlp/imdb"):
        return hf_dataset("stanfordnlp/imdb", None, split, text_column="text", label_column="label",
                          eval_split="test")
    texts, y = _imdb_file(str(folder / name))
    return Split(y=y, texts=texts, num_classes=2, label_names=IMDB_LABELS, kind="text")


# --- user data -------------------------------------------------------------------------------------------

def user_dataset(dataset_id: str, split: str, *, eval_file: str | None, text_column: str | None,
                 text_column2: str | None, label_column: str | None) -> Split:
    """``file:PATH`` (CSV/TSV/JSON lines/parquet) or ``hf:ID[:CONFIG]``; eval from eval_file or a seeded split."""
    prefix, _, ref = dataset_id.partition(":")
    if prefix == "hf":
        repo, _, config = ref.partition(":")
        return hf_dataset(repo, config or None, split, text_column=text_column or "text",
                          text_column2=text_column2, label_column=label_column or "label", eval_split=eval_file)
    cols = (text_column or "text", text_column2, label_column or "label")
    train = _read_table(ref, *cols)
    if eval_file is not None:
        if split == "train":
            return _to_split(train, train, ref)
        return _to_split(_read_table(eval_file, *cols), train, eval_file)
    return _seeded_part(_to_split(train, train, ref), split)


def _seeded_part(full: Split, split: str) -> Split:
    """Stratified seeded train/eval split (80/20) of one table, the same for every trial seed."""
    if len(full) < 3:
        raise ValueError(f"dataset has {len(full)} rows: too few to split off an eval set; pass --eval-file")
    train, evals = holdout(full, USER_EVAL_FRACTION, USER_SPLIT_SEED)
    return evals if split == "eval" else train


@functools.lru_cache(maxsize=8)
def _read_table_cached(path: str, mtime: float, text_column: str, text_column2: str | None,
                       label_column: str) -> tuple[tuple[str, ...], tuple[str, ...] | None, tuple]:
    import pandas as pd

    lower = path.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zip").removesuffix(".xz")
    try:
        if lower.endswith(".csv"):
            frame = pd.read_csv(path)
        elif lower.endswith((".tsv", ".tab")):
            frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
        elif lower.endswith((".jsonl", ".json", ".ndjson")):
            frame = pd.read_json(path, lines=True)
        elif lower.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            raise ValueError(f"{path}: unknown table format; use .csv, .tsv, .jsonl or .parquet")
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read ({_first_line(exc)})") from None
    except Exception as exc:  # parser errors of every kind: one line
        raise ValueError(f"{path}: cannot read ({_first_line(exc)})") from None
    wanted = [c for c in (text_column, text_column2, label_column) if c is not None]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: no column {', '.join(map(repr, missing))}; columns are {', '.join(map(str, frame.columns))}"
        )
    empty = int(frame[wanted].isna().any(axis=1).sum())
    if empty:
        raise ValueError(f"{path}: {empty} row(s) with an empty {'/'.join(wanted)} value")
    if len(frame) == 0:
        raise ValueError(f"{path}: no rows")
    texts = tuple(frame[text_column].astype(str))
    texts2 = tuple(frame[text_column2].astype(str)) if text_column2 else None
    return texts, texts2, tuple(frame[label_column].tolist())


def _read_table(path: str, text_column: str, text_column2: str | None, label_column: str):
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return _read_table_cached(str(p), p.stat().st_mtime, text_column, text_column2, label_column)


def _label_space(values: tuple) -> tuple[str, ...]:
    """Label names in a stable order: numeric labels numerically, others as sorted strings."""
    uniq = set(values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in uniq):
        return tuple(str(v) for v in sorted(uniq))
    return tuple(sorted(str(v) for v in uniq))


def _to_split(table, train_table, where: str) -> Split:
    texts, texts2, labels = table
    names = _label_space(train_table[2])
    if len(names) < 2:
        raise ValueError(f"{where}: the label column has {len(names)} distinct value(s); need at least 2")
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise ValueError(f"{where}: label(s) {', '.join(unknown[:5])} do not occur in the training data")
    y = torch.tensor([index[str(v)] for v in labels], dtype=torch.long)
    return Split(y=y, texts=texts, texts2=texts2, num_classes=len(names), label_names=names, kind="text")


def is_local_folder(ref: str) -> bool:
    """``hf:`` names a folder (``save_to_disk``'s) when it is a path: absolute, relative or ``~``."""
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().is_dir()


def hf_dataset(repo: str, config: str | None, split: str, *, text_column: str, label_column: str,
               text_column2: str | None = None, eval_split: str | None = None) -> Split:
    """A Hugging Face hub dataset (needs network or a warm local cache), or a folder written by
    ``datasets.save_to_disk`` (read with ``load_from_disk``, never the network)."""
    local = is_local_folder(repo)
    if not local and not reachable("huggingface.co"):
        raise FileNotFoundError(
            f"Hugging Face dataset {repo!r} needs network access (offline or no network here); "
            "use file:PATH or a save_to_disk folder with a local copy instead"
        )
    try:
        import datasets

        ds = datasets.load_from_disk(str(Path(repo).expanduser())) if local else datasets.load_dataset(repo, config)
    except Exception as exc:
        raise FileNotFoundError(f"cannot load Hugging Face dataset {repo!r} ({_first_line(exc)})") from None
    if local and not isinstance(ds, datasets.DatasetDict):  # one saved Dataset: its rows are the train split
        ds = datasets.DatasetDict({"train": ds})
    if "train" not in ds:
        raise ValueError(f"Hugging Face dataset {repo!r} has no 'train' split; splits: {', '.join(ds)}")
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in ds), None)
    elif eval_split not in ds:
        raise ValueError(f"Hugging Face dataset {repo!r} has no split {eval_split!r}; splits: {', '.join(ds)}")
    features = ds["train"].features
    for col in (text_column, text_column2, label_column):
        if col is not None and col not in features:
            raise ValueError(f"Hugging Face dataset {repo!r}: no column {col!r}; columns are {', '.join(features)}")
    label_feature = features[label_column]
    names = tuple(getattr(label_feature, "names", None) or ())

    def part(name: str) -> tuple:
        d = ds[name]
        return (tuple(map(str, d[text_column])), tuple(map(str, d[text_column2])) if text_column2 else None,
                tuple(d[label_column]))

    if names:  # ClassLabel: keep the dataset's own ids and names; drop unlabelled rows (-1, e.g. GLUE test)
        def as_split(tab: tuple) -> Split:
            keep = [i for i, v in enumerate(tab[2]) if v >= 0]
            return Split(y=torch.tensor([tab[2][i] for i in keep], dtype=torch.long),
                         texts=tuple(tab[0][i] for i in keep),
                         texts2=None if tab[1] is None else tuple(tab[1][i] for i in keep),
                         num_classes=len(names), label_names=names, kind="text")
        if eval_split is None:
            return _seeded_part(as_split(part("train")), split)
        return as_split(part("train" if split == "train" else eval_split))
    train = part("train")
    if eval_split is None:
        return _seeded_part(_to_split(train, train, repo), split)
    return _to_split(train if split == "train" else part(eval_split), train, repo)

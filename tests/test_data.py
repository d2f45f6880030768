"""sweeps.data / sweeps.sources / sweeps.text: real files, generated tasks, user tables, subsets, errors."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeps.train import data
from sweeps.train.data import sources, text


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")  # never try the network from tests


def write_cifar(root, per_batch: int = 20, seed: int = 0) -> None:
    """A small CIFAR-10 set in the real cifar-10-batches-py format; class k is brighter in channel k % 3."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        imgs = rng.integers(0, 100, (per_batch, 3, 32, 32))
        for i, k in enumerate(labels):
            imgs[i, k % 3] += 15 * k
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(),
                 b"data": imgs.astype(np.uint8).reshape(per_batch, 3072), b"filenames": [b"x.png"] * per_batch}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


# --- built-in datasets -----------------------------------------------------------------------------------

def test_synthetic_is_the_authors_task_and_fixed():
    tr, ev = data.load("synthetic", "train"), data.load("synthetic", "eval")
    assert (len(tr), len(ev)) == (8000, 2000) and tr.x.shape == (8000, 20) and tr.num_classes == 10
    assert torch.equal(tr.y, (tr.x[:, :5].sum(1) > 0).long())
    assert torch.equal(data.load("synthetic", "train").x, tr.x)
    assert not any(torch.equal(ev.x[0], r) for r in tr.x[:100])
    assert 0.45 < tr.y.float().mean() < 0.55


def test_synthetic_gmm_is_ten_gaussian_classes():
    tr, ev = data.load("synthetic-gmm", "train"), data.load("synthetic-gmm", "eval")
    assert (len(tr), len(ev), tr.x.shape[1]) == (6400, 1600, 64)
    assert set(tr.y.tolist()) == set(range(10))
    means = torch.stack([tr.x[tr.y == k].mean(0) for k in range(10)])
    nearest = torch.cdist(ev.x, means).argmin(1)
    assert (nearest == ev.y).float().mean() > 0.8  # separable, but not trivially


def test_trec_real_files():
    tr, ev = data.load("trec6", "train"), data.load("trec6-scratch", "eval")
    assert (len(tr), len(ev)) == (5452, 500)
    counts = Counter(tr.label_names[i] for i in tr.y.tolist())
    assert counts == {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
    assert Counter(ev.label_names[i] for i in ev.y.tolist())["DESC"] == 138
    assert "sister\xf0city" in tr.texts[65]  # the file's one latin-1 byte survives
    assert tr.texts[0] == "How did serfdom develop in and then leave Russia ?"


def test_rte_pairs_and_dev_split():
    tr, ev = data.load("rte", "train"), data.load("rte", "eval")
    assert (len(tr), len(ev)) == (2490, 277)
    assert tr.texts2 is not None and len(tr.texts2) == 2490
    assert tr.y.bincount().tolist() == [1249, 1241] and ev.y.bincount().tolist() == [146, 131]
    assert tr.texts2[0] == "Weapons of Mass Destruction Found in Iraq."


def test_imdb_full_split_and_stratified_subset():
    tr = data.load("imdb", "train")
    assert len(tr) == 25_000 and tr.y.bincount().tolist() == [12_500, 12_500]
    sub = data.load("imdb", "eval", max_n=101, seed=3)
    assert len(sub) == 101 and sorted(sub.y.bincount().tolist()) == [50, 51]
    assert sub.texts == data.load("imdb", "eval", max_n=101, seed=3).texts
    assert sub.texts != data.load("imdb", "eval", max_n=101, seed=4).texts


def test_cifar10_reads_the_python_batches(tmp_path):
    write_cifar(tmp_path, per_batch=8)
    tr, ev = data.load("cifar10", "train", data_dir=tmp_path), data.load("cifar10", "eval", data_dir=tmp_path)
    assert tr.x.shape == (40, 3, 32, 32) and tr.x.dtype == torch.uint8 and len(ev) == 8
    assert tr.label_names[0] == "airplane"


def test_cifar10_missing_is_one_line_saying_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"put cifar-10-batches-py .*data_batch_1.* in ") as err:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_cifar10_corrupt_batch_is_a_value_error(tmp_path):
    write_cifar(tmp_path, per_batch=4)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        data.load("cifar10", "eval", data_dir=tmp_path)


@pytest.mark.parametrize("dataset,folder", [("trec6", "trec"), ("rte", "rte"), ("imdb", "imdb")])
def test_missing_text_files_offline(tmp_path, dataset, folder):
    with pytest.raises(FileNotFoundError, match=f"put .* in {tmp_path / folder}") as err:
        data.load(dataset, "train", data_dir=tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad,words", [
    ("mnist", ["unknown dataset 'mnist'", "known: synthetic", "file:PATH", "hf:ID"]),
    ("file:", ["dataset 'file:' names no file or Hugging Face id after the prefix"]),
    ("", ["unknown dataset ''", "known: synthetic"]),
    ("TREC6", ["unknown dataset 'TREC6'", "trec6-scratch"]),  # ids are case-sensitive
])
def test_unknown_dataset_id(bad, words):
    with pytest.raises(ValueError) as err:
        data.load(bad, "train")
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_bad_split_and_subset_size():
    with pytest.raises(ValueError, match="unknown split"):
        data.load("synthetic", "test")
    with pytest.raises(ValueError, match="positive integer"):
        data.load("synthetic", "train", max_n=0)


# --- subsets ---------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300), st.integers(1, 400), st.integers(0, 10))
def test_stratified_indices_keep_proportions(labels, n, seed):
    labels = np.array(labels)
    idx = data.stratified_indices(labels, n, seed)
    assert len(idx) == min(n, len(labels)) and len(set(idx.tolist())) == len(idx)
    for c in np.unique(labels):
        exact = (labels == c).sum() * min(n, len(labels)) / len(labels)
        assert abs((labels[idx] == c).sum() - exact) < 1.0 + 1e-9
    assert np.array_equal(idx, data.stratified_indices(labels, n, seed))


# --- user data -------------------------------------------------------------------------------------------

def _table(n: int = 50):
    import pandas as pd

    rows = [{"review": f"{'great fine' if i % 2 else 'awful poor'} film number {i}",
             "other": f"second {i}", "sentiment": "pos" if i % 2 else "neg"} for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet", "csv.gz"])
def test_user_file_formats(tmp_path, suffix):
    frame = _table()
    path = tmp_path / f"reviews.{suffix}"
    if suffix.startswith("csv"):
        frame.to_csv(path, index=False)
    elif suffix == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    kw = dict(eval_file=None, text_column="review", text_column2=None, label_column="sentiment")
    tr, ev = data.load(f"file:{path}", "train", **kw), data.load(f"file:{path}", "eval", **kw)
    assert (len(tr), len(ev)) == (40, 10) and tr.label_names == ("neg", "pos")
    assert ev.y.bincount().tolist() == [5, 5]
    assert not set(tr.texts) & set(ev.texts)
    assert all(("great" in t) == (tr.label_names[y] == "pos") for t, y in zip(tr.texts, tr.y.tolist()))


def test_user_file_with_eval_file_and_pairs(tmp_path):
    _table(30).to_csv(tmp_path / "tr.csv", index=False)
    _table(8).to_csv(tmp_path / "ev.csv", index=False)
    kw = dict(eval_file=str(tmp_path / "ev.csv"), text_column="review", text_column2="other",
              label_column="sentiment")
    tr, ev = data.load(f"file:{tmp_path / 'tr.csv'}", "train", **kw), data.load(
        f"file:{tmp_path / 'tr.csv'}", "eval", **kw)
    assert (len(tr), len(ev)) == (30, 8) and ev.texts2[0] == "second 0"


def test_user_file_errors(tmp_path):
    frame = _table()
    frame.to_csv(tmp_path / "a.csv", index=False)
    kw = dict(eval_file=None, text_column="review", text_column2=None, label_column="label")
    with pytest.raises(ValueError, match=r"no column 'label'; columns are review, other, sentiment"):
        data.load(f"file:{tmp_path / 'a.csv'}", "train", **kw)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        data.load(f"file:{tmp_path / 'missing.csv'}", "train", **kw)
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown table format"):
        data.load(f"file:{tmp_path / 'a.xlsx'}", "train", **kw)
    frame.assign(sentiment="pos").to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(ValueError, match="need at least 2"):
        data.load(f"file:{tmp_path / 'one.csv'}", "train", **{**kw, "label_column": "sentiment"})
    frame.assign(sentiment="meh").to_csv(tmp_path / "ev.csv", index=False)
    with pytest.raises(ValueError, match="label.* meh do not occur in the training data"):
        data.load(f"file:{tmp_path / 'a.csv'}", "eval",
                  **{**kw, "label_column": "sentiment", "eval_file": str(tmp_path / "ev.csv")})
    frame.loc[3, "review"] = None
    frame.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(ValueError, match="1 row.* empty"):
        data.load(f"file:{tmp_path / 'holes.csv'}", "train", **{**kw, "label_column": "sentiment"})


def test_hf_dataset_offline_is_one_line():
    with pytest.raises(FileNotFoundError, match="needs network access"):
        data.load("hf:stanfordnlp/imdb", "train")


# --- tokenisation ----------------------------------------------------------------------------------------

def test_vocab_from_train_only_and_pairs():
    tr = data.load("rte", "train", max_n=50)
    vocab = text.Vocab.build(tr.texts + tr.texts2)
    assert vocab.itos[:3] == text.SPECIALS and len(set(vocab.itos)) == len(vocab)
    enc = text.encode_words(tr, vocab, max_length=400)
    ids = enc.inputs["input_ids"]
    assert (ids == text.SEP).sum(1).tolist() == [1] * 50  # one separator per pair
    assert not (ids == text.UNK).any()  # every train word is in the train vocabulary
    short = text.encode_words(tr, vocab, max_length=7)
    assert short.inputs["input_ids"].shape == (50, 7)


def test_trim_cuts_batches_to_their_longest_row():
    tr = data.load("trec6", "train", max_n=200)
    enc = text.encode_words(tr, text.Vocab.build(tr.texts), max_length=64)
    lengths = enc.inputs["attention_mask"].sum(1)
    shortest = lengths.argsort()[:8]
    batch = text.trim(enc.inputs, shortest)
    assert batch["input_ids"].shape[1] == max(text.MIN_LENGTH, int(lengths[shortest].max()))
    assert batch["input_ids"].shape[1] < enc.inputs["input_ids"].shape[1]


def test_encoder_tokenizer_encodes_pairs():
    from sweeps.train import models

    tok = models.load_tokenizer("minilm")
    tr = data.load("rte", "train", max_n=16)
    enc = text.encode_tokenizer(tr, tok, max_length=32)
    assert enc.inputs["input_ids"].shape == (16, 32)  # RTE pairs all exceed 32 tokens
    assert (enc.inputs["input_ids"] == tok.sep_token_id).sum(1).min() == 2


def test_hf_local_folder_saved_with_save_to_disk(tmp_path, monkeypatch):
    """`hf:PATH` reads a `datasets.save_to_disk` folder with no network (offline here): a DatasetDict
    keeps its splits and ClassLabel names, one Dataset is split 80/20 like a file."""
    import datasets

    monkeypatch.setenv("DALS_OFFLINE", "1")
    frame = _table(40)
    labels = datasets.ClassLabel(names=["neg", "pos"])
    rows = {"review": list(frame["review"]), "label": [int(s == "pos") for s in frame["sentiment"]]}
    features = datasets.Features({"review": datasets.Value("string"), "label": labels})
    whole = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": whole.select(range(30)), "test": whole.select(range(30, 40))}).save_to_disk(
        tmp_path / "dict")
    kw = dict(eval_file=None, text_column="review", text_column2=None, label_column="label")
    tr, ev = data.load(f"hf:{tmp_path / 'dict'}", "train", **kw), data.load(f"hf:{tmp_path / 'dict'}", "eval", **kw)
    assert (len(tr), len(ev), tr.label_names) == (30, 10, ("neg", "pos"))
    assert tr.texts == tuple(rows["review"][:30]) and ev.y.tolist() == rows["label"][30:]

    datasets.Dataset.from_dict({"review": rows["review"], "sentiment": list(frame["sentiment"])}).save_to_disk(
        tmp_path / "one")
    kw["label_column"] = "sentiment"
    tr, ev = data.load(f"hf:{tmp_path / 'one'}", "train", **kw), data.load(f"hf:{tmp_path / 'one'}", "eval", **kw)
    assert (len(tr), len(ev), tr.label_names) == (32, 8, ("neg", "pos")) and not set(tr.texts) & set(ev.texts)
    with pytest.raises(ValueError, match=r"'.*one': no column 'text'; columns are review, sentiment"):
        data.load(f"hf:{tmp_path / 'one'}", "train", **{**kw, "text_column": "text"})
    with pytest.raises(FileNotFoundError, match=r"cannot load Hugging Face dataset '.*/missing'"):
        data.load(f"hf:{tmp_path / 'missing'}", "train", **kw)

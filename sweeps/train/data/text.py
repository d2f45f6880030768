"""Tokenisation, done once per dataset load: a word vocabulary for models trained from scratch, the
encoder's own tokenizer for fine-tuning. Splits become padded id tensors; batches are trimmed to their
longest row by :func:`trim`, so short questions do not pay for ``max_length``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from sweeps.train.data.split import Split

PAD, UNK, SEP = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<sep>")
MIN_LENGTH = 5  # the widest text-CNN kernel
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (HTML line breaks dropped)."""
    return _WORD.findall(text.replace("<br />", " ").lower())


@dataclass(frozen=True)
class Vocab:
    """Word -> id, built from the training split only (ids 0-2 are pad, unk, sep)."""

    itos: tuple[str, ...]

    @property
    def stoi(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, texts: Iterable[str], *, min_freq: int = 1, max_size: int = 50_000) -> "Vocab":
        counts = Counter(w for t in texts for w in words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept[: max_size - len(SPECIALS)]))


@dataclass(frozen=True)
class Encoded:
    """A split as tensors: ``inputs`` (name -> [N, L] int64, with ``attention_mask``) and labels ``y``."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def encode_words(data: Split, vocab: Vocab, max_length: int) -> Encoded:
    """Ids for the scratch models; a pair is ``text <sep> text2``, cut to ``max_length``."""
    stoi = vocab.stoi
    rows = []
    pairs = data.texts2 if data.texts2 is not None else [None] * len(data)
    for text, text2 in zip(data.texts, pairs):
        ids = [stoi.get(w, UNK) for w in words(text)]
        if text2 is not None:
            ids += [SEP] + [stoi.get(w, UNK) for w in words(text2)]
        rows.append(ids[:max_length] or [UNK])
    width = max(MIN_LENGTH, max((len(r) for r in rows), default=1))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return Encoded({"input_ids": ids, "attention_mask": (ids != PAD).long()}, data.y)


def encode_tokenizer(data: Split, tokenizer, max_length: int) -> Encoded:
    """Ids from a Hugging Face tokenizer (pairs truncated longest-first), padded to the split's longest row."""
    out = tokenizer(
        list(data.texts),
        list(data.texts2) if data.texts2 is not None else None,
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    keep = ("input_ids", "attention_mask", "token_type_ids")
    return Encoded({k: out[k].long() for k in keep if k in out}, data.y)


def trim(inputs: dict[str, torch.Tensor], index: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
    """Rows ``index`` of the inputs, cut to the longest real row among them (right padding assumed)."""
    mask = inputs["attention_mask"][index]
    width = max(MIN_LENGTH, int(mask.sum(dim=1).max())) if len(mask) else MIN_LENGTH
    return {k: v[index][:, :width] for k, v in inputs.items()}

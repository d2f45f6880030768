"""The raw-data record every loader returns, seeded stratified subsets of it, and the validation
carve (kept apart so loaders, the registry and the trial can share them)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """One split of one dataset. Exactly one of ``x`` (features/images) or ``texts`` is set."""

    y: torch.Tensor  # int64 [N]
    num_classes: int
    label_names: tuple[str, ...]
    kind: str  # "tensor" | "image" | "text"
    x: torch.Tensor | None = None  # float [N, D] or uint8 [N, 3, 32, 32]
    texts: tuple[str, ...] | None = None
    texts2: tuple[str, ...] | None = None  # second sentence of a pair (RTE), else None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> "Split":
        """The rows ``idx`` (a subset), keeping the label space."""
        t = torch.as_tensor(idx, dtype=torch.long)
        pick = (lambda seq: tuple(seq[i] for i in idx)) if len(idx) else (lambda seq: ())
        return replace(
            self,
            y=self.y[t],
            x=None if self.x is None else self.x[t],
            texts=None if self.texts is None else pick(self.texts),
            texts2=None if self.texts2 is None else pick(self.texts2),
        )


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` row indices with class proportions kept (largest remainder), seeded; sorted order.

    Why: CPU sweeps run on subsets, and a subset must not drop or skew classes between seeds.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    take = np.floor(exact).astype(int)
    short = n - int(take.sum())
    order = np.lexsort((classes, -(exact - take)))  # largest remainder first, ties by class
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def subset(split: Split, n: int | None, seed: int) -> Split:
    """A stratified seeded subset of ``n`` rows (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= len(split):
        return split
    return split.take(stratified_indices(split.y.numpy(), n, seed))


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(the rest, a stratified ``fraction`` of the rows): a validation split carved from a train split.

    Why: tuning on the eval (test) split makes the tuned numbers optimistic. ``seed`` is fixed by the
    caller (not the trial's seed), so every trial seed holds out the same rows.
    """
    total = len(split)
    n = round(fraction * total)
    if not 1 <= n < total:
        raise ValueError(f"validation {fraction:g} of {total} train rows leaves {n} validation and "
                         f"{total - n} train rows; both need at least one")
    val = stratified_indices(split.y.numpy(), n, seed)
    rest = np.setdiff1d(np.arange(total), val, assume_unique=True)
    return split.take(rest), split.take(val)

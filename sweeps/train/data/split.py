"""The raw-data record every loader returns, and seeded stratified subsets of it (kept apart so
loaders and the registry can share them)."""
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

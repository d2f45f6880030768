"""The raw-data record every loader returns (kept apart so loaders and the interface can share it)."""
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

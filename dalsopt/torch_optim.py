"""torch's own optimizer classes with the dalsopt step signature ``step(closure=None, *, loss=None)``.

The Gen1-3 baselines stay torch's classes (same maths, same ``state_dict``, ``isinstance`` holds); these
subclasses only accept the loss every dalsopt optimizer takes, so ``Strategy.step`` and wrappers such as
``Lookahead`` treat all 18 strategies alike.
"""
from __future__ import annotations

import torch

from .loss import IgnoresLoss

__all__ = ["SGD", "Adam", "AdamW", "RAdam"]


class SGD(IgnoresLoss, torch.optim.SGD):
    """``torch.optim.SGD``, taking (and ignoring) the loss."""


class Adam(IgnoresLoss, torch.optim.Adam):
    """``torch.optim.Adam``, taking (and ignoring) the loss."""


class AdamW(IgnoresLoss, torch.optim.AdamW):
    """``torch.optim.AdamW``, taking (and ignoring) the loss."""


class RAdam(IgnoresLoss, torch.optim.RAdam):
    """``torch.optim.RAdam``, taking (and ignoring) the loss."""

"""From blocks to torch param groups: one group per block, the per-block rate baked into ``lr``.

Baking the discriminative factor into ``group["lr"]`` (instead of a hidden scale) means every torch
scheduler scales it and a training loop reads the real rate of each block.
"""
from __future__ import annotations

from typing import Callable

from .groups import Block

__all__ = ["param_groups", "discriminative"]


def discriminative(decay: float) -> Callable[[Block, int], float]:
    """ULMFiT's factor: the top block gets the base rate, each block below ``1/decay`` of the one above."""
    return lambda block, count: decay ** -(count - 1 - block.index)


def param_groups(
    blocks: list[Block],
    lr: float,
    *,
    factor: Callable[[Block, int], float] | None = None,
    split_no_decay: bool = False,
) -> list[dict]:
    """Torch param groups with ``block``, ``depth`` and the block's ``lr``. With ``split_no_decay`` the
    biases and norm weights of each block get their own group with no decay and no trust ratio."""
    groups = []
    for block in blocks:
        scale = factor(block, len(blocks)) if factor else 1.0
        parts = [(block.params, False)]
        if split_no_decay:
            parts = [
                ([p for p, nd in zip(block.params, block.no_decay) if not nd], False),
                ([p for p, nd in zip(block.params, block.no_decay) if nd], True),
            ]
        for params, no_decay in parts:
            if not params:
                continue
            group = {"params": params, "lr": lr * scale, "block": block.index, "depth": block.depth}
            if no_decay:
                group.update(weight_decay=0.0, trust=False)
            groups.append(group)
    return groups

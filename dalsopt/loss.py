"""How the training loss reaches a dalsopt optimizer: one step signature for all of them.

Every optimizer ``dalsopt.make`` returns steps as ``step(closure=None, *, loss=None)``. DALS reads the
loss; the others ignore it. A loop that cannot pass it (``transformers.Trainer``, Accelerate, anything
calling ``optimizer.step()``) hands it over beforehand with ``observe_loss(optimizer, loss)``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["TakesLoss", "IgnoresLoss", "observe_loss", "global_mean"]


class TakesLoss:
    """Mixin for optimizers that step with ``step(closure=None, *, loss=None)``: keeps a loss handed
    over with ``observe`` until the next step takes it."""

    needs_closure = False  # SAM: True (its step re-evaluates the loss through the closure)
    _pending_loss: Tensor | float | None = None

    def observe(self, loss: Tensor | float) -> None:
        """Hand over the loss for the next step (a later call before that step replaces it)."""
        self._pending_loss = loss.detach() if isinstance(loss, Tensor) else loss

    def take_loss(self, loss: Tensor | float | None) -> Tensor | float | None:
        """The loss for this step: the one passed, else the one handed over (used once), else ``None``."""
        pending, self._pending_loss = self._pending_loss, None
        return pending if loss is None else loss


class IgnoresLoss(TakesLoss):
    """For torch's own optimizer classes: the dalsopt step signature, the loss dropped."""

    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        self.take_loss(loss)
        return super().step(closure)  # type: ignore[misc]


def _unwrap(optimizer: object) -> object:
    """Through foreign wrappers (Accelerate's ``AcceleratedOptimizer``, a ``Strategy``) to ours."""
    for _ in range(8):
        if isinstance(optimizer, TakesLoss) or not hasattr(optimizer, "optimizer"):
            break
        optimizer = optimizer.optimizer
    return optimizer


def observe_loss(optimizer: object, loss: Tensor | float) -> bool:
    """Hand ``loss`` to ``optimizer`` for its next ``step()``: the way into DALS from loops that call
    ``optimizer.step()`` without arguments. ``optimizer`` may be a ``Strategy``, a dalsopt optimizer or a
    wrapper around one (Accelerate's ``AcceleratedOptimizer``). Returns whether an optimizer took it
    (torch's own classes: no). Under data parallelism hand every rank the same loss (``global_mean``),
    or their phases drift apart."""
    target = _unwrap(optimizer)
    if not isinstance(target, TakesLoss):
        return False
    target.observe(loss)
    return True


def global_mean(loss: Tensor) -> Tensor:
    """The mean of ``loss`` over the ranks of ``torch.distributed`` (itself outside a process group), so
    that data-parallel replicas see one loss and take the same DALS phase."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss.detach()
    out = loss.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()

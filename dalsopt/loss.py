"""How the training loss reaches a dalsopt optimizer: one step signature for all of them.

Every optimizer ``dalsopt.make`` returns steps as ``step(closure=None, *, loss=None)``. DALS reads the
loss; the others ignore it. A loop that cannot pass it (``transformers.Trainer``, Accelerate, anything
calling ``optimizer.step()``) hands it over beforehand with ``observe``.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = ["TakesLoss", "IgnoresLoss"]


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

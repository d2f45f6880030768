"""``transformers.Trainer`` hands DALS the training loss of every optimizer step.

The Trainer calls ``optimizer.step()`` with no arguments and tells callbacks nothing of the loss, so
the loss is taken where it is made and handed over with ``dalsopt.observe_loss`` before the step:

* ``DALSCallback`` (any Trainer): a forward hook on the model collects ``outputs.loss`` of the training
  passes; before each optimizer step their mean over the step's micro-batches is handed over. A
  ``compute_loss`` that does not use the model's own loss is invisible to it: use the mixin then.
* ``DALSTrainerMixin`` / ``DALSTrainer``: ``training_step`` adds up the losses it returns over the
  step's micro-batches (what the Trainer logs as ``loss``) and hands the sum over.

Either way the loss is averaged over data-parallel ranks, so replicas keep one phase. The phase depends
on relative changes of the loss EMA only: a constant factor (accumulation scaling) does not move it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from ..loss import global_mean, observe_loss

__all__ = ["DALSCallback", "DALSTrainerMixin", "DALSTrainer"]


def _model_loss(output: Any) -> Tensor | None:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) else None


class DALSCallback(TrainerCallback):
    """Collects the model's training loss and hands it to the optimizer before each step."""

    def __init__(self) -> None:
        self._losses: list[Tensor] = []
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        loss = _model_loss(output)
        if loss is not None and module.training and torch.is_grad_enabled():
            self._losses.append(loss.detach().float().mean())

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._capture)

    def on_pre_optimizer_step(self, args, state, control, optimizer: Any = None, **kwargs):
        if self._losses and optimizer is not None:
            observe_loss(optimizer, global_mean(torch.stack(self._losses).mean()))
        self._losses.clear()

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class DALSTrainerMixin:
    """Put before ``Trainer`` (or a subclass such as TRL's ``SFTTrainer``) in the bases: hands the loss
    ``training_step`` returns, summed over the step's micro-batches, to the optimizer."""

    _dals_loss: Tensor | None = None

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch: Any = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        self._dals_loss = loss if self._dals_loss is None else self._dals_loss + loss
        if self.accelerator.sync_gradients:  # type: ignore[attr-defined]  # the step's last micro-batch
            observe_loss(self.optimizer, global_mean(self._dals_loss))  # type: ignore[attr-defined]
            self._dals_loss = None
        return loss


class DALSTrainer(DALSTrainerMixin, Trainer):
    """``transformers.Trainer`` that hands DALS the training loss of every step."""

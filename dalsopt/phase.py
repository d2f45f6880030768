"""DALS's loss-phase detector: fast descent, slow descent or plateau, from an EMA of the loss.

A step-level transform of ``Chain``: once per step it reads the loss from the step context, updates its
own state (the EMA, the phase; saved with the optimizer, which the authors' code did not do) and
publishes the phase on the step context, where the depth-aware filter reads it.

Everything stays on the parameters' device: the loss is taken as a tensor (never ``.item()``), the EMA
is kept in float64 (float32 where the device has no float64) and the phase is decided with
``torch.where``, so a CUDA step never waits for the host.

A step without a loss (a foreign loop calling ``optimizer.step()`` with nothing handed over through
``dalsopt.observe_loss``) is not an error: the detector warns once and keeps its phase (plateau if no loss
ever came), so DALS runs on as a fixed-phase filter instead of crashing someone else's training loop.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .chain import Ctx, StepContext

__all__ = ["PhaseDetector", "MissingLossWarning", "by_phase", "FAST", "SLOW", "PLATEAU"]

FAST, SLOW, PLATEAU = 0, 1, 2


class MissingLossWarning(UserWarning):
    """DALS stepped without a training loss; its phase stays where it is."""


def _outside() -> int:
    """The ``stacklevel`` of the first caller outside dalsopt and torch (the loop that called ``step``)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("dalsopt", "torch"):
        frame, level = frame.f_back, level + 1
    return level


def by_phase(shared: StepContext, key: object, values: tuple[float, float, float],
             tensors: list[Tensor]) -> float | list[Tensor]:
    """``values[phase]`` for a foreach call over ``tensors``. Where the phase lives on the host (CPU)
    reading it costs nothing, so it is a number (torch's fast scalar kernels); elsewhere one 0-d tensor
    per tensor (its dtype), chosen on the device with ``torch.where`` once per step: no sync."""
    phase = shared.phase
    assert phase is not None
    if phase.device.type == "cpu":
        return values[int(phase)]

    def choose(dtype: torch.dtype) -> Tensor:
        last = torch.full((), values[PLATEAU], dtype=dtype, device=phase.device)
        return torch.where(phase == FAST, values[FAST], torch.where(phase == SLOW, values[SLOW], last))

    return [shared.once((key, t.dtype), lambda t=t: choose(t.dtype)) for t in tensors]


def _float(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _place(state: dict, device: torch.device) -> None:
    """The detector's state as 0-d tensors on ``device``: created before the first step, moved after a
    checkpoint was loaded elsewhere (a metadata check, no copy in the steady state)."""
    if "ema" not in state:
        zero = torch.zeros((), dtype=_float(device), device=device)
        state.update(ema=zero, delta=zero, phase=torch.full((), PLATEAU, device=device),
                     count=torch.zeros((), dtype=torch.long, device=device))
    elif state["ema"].device != device:
        state.update({k: v.to(device) for k, v in state.items()})


def _as_tensor(loss: Tensor | float, like: Tensor) -> Tensor:
    """The loss as a 0-d tensor of ``like``'s dtype and device, without waiting for it."""
    if isinstance(loss, Tensor):
        return loss.detach().reshape(()).to(device=like.device, dtype=like.dtype, non_blocking=True)
    return torch.full((), float(loss), dtype=like.dtype, device=like.device)


@dataclass
class PhaseDetector:
    """``E <- decay E + (1 - decay) L`` (``E_0 = L_0``); ``delta = (E_old - E_new) / max(|E_old|, 1e-8)``;
    phase 0 if ``delta > fast``, 1 if ``slow < delta <= fast``, else 2 (also on the first step).
    Its state: ``ema``, ``delta``, ``phase`` and ``count`` (losses seen), 0-d tensors."""

    fast: float = 0.01
    slow: float = 0.002
    decay: float = 0.95
    name: str = field(default="phase", kw_only=True)
    _warned: bool = field(default=False, init=False, repr=False, compare=False)

    def begin(self, shared: StepContext, state: dict) -> None:
        _place(state, shared.device)
        if shared.loss is None:
            self._missing()
            shared.phase = state["phase"]
            return
        ema, first = state["ema"], state["count"] == 0
        loss = _as_tensor(shared.loss, ema)
        new = torch.where(first, loss, self.decay * ema + (1.0 - self.decay) * loss)
        delta = torch.where(first, 0.0, (ema - new) / ema.abs().clamp_min(1e-8))
        delta = torch.where(delta.isfinite(), delta, 0.0)
        phase = torch.where(delta > self.fast, FAST, torch.where(delta > self.slow, SLOW, PLATEAU))
        state.update(ema=new, delta=delta, phase=phase, count=state["count"] + 1)
        shared.phase = phase

    def _missing(self) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            "DALS got no training loss for this step, so its phase stays where it is (plateau if no loss has "
            "come yet) until one comes: pass it with s.step(loss=...) or dalsopt.observe_loss(optimizer, loss) "
            "before optimizer.step() (transformers.Trainer: dalsopt.integrations.DALSCallback)",
            MissingLossWarning, stacklevel=_outside())

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        return u

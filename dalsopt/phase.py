"""DALS's loss-phase detector: fast descent, slow descent or plateau, from an EMA of the loss.

A step-level transform of ``Chain``: once per step it reads the loss from the step context, updates its
own state (the EMA, the phase; saved with the optimizer, which the authors' code did not do) and
publishes the phase on the step context, where the depth-aware filter reads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from .chain import Ctx, StepContext

__all__ = ["PhaseDetector", "FAST", "SLOW", "PLATEAU"]

FAST, SLOW, PLATEAU = 0, 1, 2


@dataclass(frozen=True)
class PhaseDetector:
    """``E <- decay E + (1 - decay) L`` (``E_0 = L_0``); ``delta = (E_old - E_new) / max(|E_old|, 1e-8)``;
    phase 0 if ``delta > fast``, 1 if ``slow < delta <= fast``, else 2 (also on the first step)."""

    fast: float = 0.01
    slow: float = 0.002
    decay: float = 0.95
    name: str = field(default="phase", kw_only=True)

    def begin(self, shared: StepContext, state: dict) -> None:
        if shared.loss is None:
            raise ValueError("DALS needs the training loss at every step: call s.step(loss=loss)")
        loss = float(shared.loss)
        ema = state.get("ema")
        if ema is None:
            new, delta = loss, 0.0
        else:
            new = self.decay * ema + (1.0 - self.decay) * loss
            delta = (ema - new) / max(abs(ema), 1e-8)
        if not math.isfinite(delta):
            delta = 0.0
        phase = FAST if delta > self.fast else SLOW if delta > self.slow else PLATEAU
        state.update(ema=new, delta=delta, phase=phase)
        shared.phase = phase  # type: ignore[assignment]

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        return u

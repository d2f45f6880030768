"""DALS's loss-phase detector: fast descent, slow descent or plateau, from an EMA of the loss.

A step-level transform of ``Chain``: once per step it reads the loss from the step context, updates its
own state (the EMA, the phase; saved with the optimizer, which the authors' code did not do) and
publishes the phase on the step context, where the depth-aware filter reads it.

A step without a loss (a foreign loop calling ``optimizer.step()`` with nothing handed over through
``dalsopt.observe_loss``) is not an error: the detector warns once and keeps its phase (plateau if no loss
ever came), so DALS runs on as a fixed-phase filter instead of crashing someone else's training loop.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field

from torch import Tensor

from .chain import Ctx, StepContext

__all__ = ["PhaseDetector", "MissingLossWarning", "FAST", "SLOW", "PLATEAU"]

FAST, SLOW, PLATEAU = 0, 1, 2
PHASE_NAMES = ("fast descent", "slow descent", "plateau")


class MissingLossWarning(UserWarning):
    """DALS stepped without a training loss; its phase stays where it is."""


def _outside() -> int:
    """The ``stacklevel`` of the first caller outside dalsopt and torch (the loop that called ``step``)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("dalsopt", "torch"):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class PhaseDetector:
    """``E <- decay E + (1 - decay) L`` (``E_0 = L_0``); ``delta = (E_old - E_new) / max(|E_old|, 1e-8)``;
    phase 0 if ``delta > fast``, 1 if ``slow < delta <= fast``, else 2 (also on the first step).
    ``count`` in its state is the number of losses it has seen."""

    fast: float = 0.01
    slow: float = 0.002
    decay: float = 0.95
    name: str = field(default="phase", kw_only=True)
    _warned: bool = field(default=False, init=False, repr=False, compare=False)

    def begin(self, shared: StepContext, state: dict) -> None:
        if shared.loss is None:
            self._missing(state)
            shared.phase = state.get("phase", PLATEAU)  # type: ignore[assignment]
            return
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
        state.update(ema=new, delta=delta, phase=phase, count=state.get("count", 0) + 1)
        shared.phase = phase  # type: ignore[assignment]

    def _missing(self, state: dict) -> None:
        if self._warned:
            return
        self._warned = True
        phase = PHASE_NAMES[state.get("phase", PLATEAU)]
        warnings.warn(
            f"DALS got no training loss for this step, so its phase stays {phase!r} until one comes: pass it "
            "with s.step(loss=...) or dalsopt.observe_loss(optimizer, loss) before optimizer.step() "
            "(transformers.Trainer: dalsopt.integrations.DALSCallback)", MissingLossWarning, stacklevel=_outside())

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        return u

"""DALS's loss-phase detector: fast descent, slow descent or plateau, from an EMA of the loss.

A monitor of ``Chain``: it sees the loss before each step; the filter reads ``phase``. Its state (the
EMA, the phase) is saved with the optimizer, which the authors' code did not do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PhaseDetector", "FAST", "SLOW", "PLATEAU"]

FAST, SLOW, PLATEAU = 0, 1, 2


@dataclass
class PhaseDetector:
    """``E <- decay E + (1 - decay) L`` (``E_0 = L_0``); ``delta = (E_old - E_new) / max(|E_old|, 1e-8)``;
    phase 0 if ``delta > fast``, 1 if ``slow < delta <= fast``, else 2 (also on the first step)."""

    fast: float = 0.01
    slow: float = 0.002
    decay: float = 0.95
    ema: float | None = None
    delta: float = 0.0
    phase: int = PLATEAU

    def observe(self, loss: float | None) -> None:
        if loss is None:
            raise ValueError("DALS needs the training loss at every step: call s.step(loss=loss)")
        if self.ema is None:
            self.ema, self.delta = loss, 0.0
        else:
            old = self.ema
            self.ema = self.decay * old + (1.0 - self.decay) * loss
            self.delta = (old - self.ema) / max(abs(old), 1e-8)
        if not math.isfinite(self.delta):
            self.delta = 0.0
        self.phase = FAST if self.delta > self.fast else SLOW if self.delta > self.slow else PLATEAU

    def state_dict(self) -> dict:
        return {"ema": self.ema, "delta": self.delta, "phase": self.phase}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.delta, self.phase = state["ema"], state["delta"], state["phase"]

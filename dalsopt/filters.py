"""Gradient filters: Grokfast's EMA amplifier and DALS's depth-aware low-pass blend.

Both keep an exponential moving average of the gradient per parameter; they differ in what they do
with it. Grokfast *adds* ``lambda * ema`` to the gradient (amplifying slow components); DALS *blends*
the raw gradient with the average, trusting the raw gradient more in deeper blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor

from .chain import Ctx
from .phase import FAST, by_phase

__all__ = ["GrokfastEMA", "DepthFilter", "depth_blend"]


@dataclass(frozen=True)
class GrokfastEMA:
    """Grokfast-EMA (Lee et al. 2024): ``mu_0 = g_0``, ``mu_t = a mu + (1 - a) g``; ``u <- u + lambda mu``.

    The first average is a *copy* of the gradient: aliasing it would make the update ~3 g.
    """

    alpha: float = 0.98
    lamb: float = 2.0
    name: str = field(default="grokfast", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        key = ctx.key("ema")
        seen = [i for i, st in enumerate(ctx.states) if key in st]  # tensors past their first step
        ema = ctx.buffer("ema", lambda p, i: u[i].detach().clone())
        if seen:
            torch._foreach_lerp_([ema[i] for i in seen], [u[i] for i in seen], 1.0 - self.alpha)
        if ctx.owned:
            torch._foreach_add_(u, ema, alpha=self.lamb)
            return u
        ctx.owned = True
        return torch._foreach_add(u, ema, alpha=self.lamb)


def depth_blend(depth: float) -> float:
    """DALS's weight of the raw gradient at normalised depth ``d``: 0.3 at the bottom, 0.7 at the top."""
    return 0.3 + 0.4 * depth


@dataclass(frozen=True)
class DepthFilter:
    """DALS's filter: ``f <- a f + (1 - a) g`` with ``a`` chosen by the loss phase (read from the step
    context, where a ``PhaseDetector`` earlier in the chain put it), then ``u = b g + (1 - b) f`` with
    ``b = depth_blend(group["depth"])``.

    ``alphas[k]`` is the filter coefficient in phase k; ``None`` means "pass the raw gradient and leave
    the filter untouched" (DALS-Fast in fast descent).
    """

    alphas: tuple[Optional[float], float, float]
    name: str = field(default="depth_filter", kw_only=True)
    BUFFER: ClassVar[str] = "ema"

    def coefficients(self, ctx: Ctx, u: list[Tensor]) -> tuple[float | list[Tensor], float | list[Tensor]]:
        """This step's (filter weight ``1 - alpha``, blend ``b``) for the group: numbers, or one 0-d device
        tensor per tensor of ``u``. DALS-Fast's fast descent is weight 0 (``f`` unchanged) and blend 1
        (``u = g``), so the phase never needs an ``if`` on the host."""
        if ctx.shared.phase is None:
            raise ValueError("DepthFilter needs a PhaseDetector before it in the chain")
        weights = tuple(0.0 if a is None else 1.0 - a for a in self.alphas)
        weight = by_phase(ctx.shared, (self.name, "weight"), weights, u)  # type: ignore[arg-type]
        blend = depth_blend(ctx.group["depth"])
        if self.alphas[FAST] is None:
            return weight, by_phase(ctx.shared, (self.name, blend), (1.0, blend, blend), u)
        return weight, blend

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        weight, blend = self.coefficients(ctx, u)
        f = ctx.zeros(self.BUFFER)
        torch._foreach_lerp_(f, u, weight)
        ctx.owned = True
        return torch._foreach_lerp(f, u, blend)

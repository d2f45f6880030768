"""Basic gradient transforms for ``Chain``: weight decay, heavy-ball momentum, Lion's sign update and
AdaBound's bounded Adam step. Each is a frozen dataclass (picklable) acting on one group's tensors at
once; hyperparameters that users tune per group (``weight_decay``, ``momentum``) are read from the group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .chain import Ctx

__all__ = ["CoupledDecay", "DecoupledDecay", "Momentum", "LionSign", "AdaBoundStep"]


@dataclass(frozen=True)
class CoupledDecay:
    """L2 decay folded into the gradient, as SGD's ``weight_decay``: ``u <- u + wd p``."""

    name: str = field(default="coupled_decay", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        if wd == 0:
            return u
        if ctx.owned:
            torch._foreach_add_(u, ctx.params, alpha=wd)
            return u
        ctx.owned = True
        return torch._foreach_add(u, ctx.params, alpha=wd)


@dataclass(frozen=True)
class DecoupledDecay:
    """AdamW-style decay applied to the weights before the update: ``p <- p (1 - lr wd)``."""

    name: str = field(default="decoupled_decay", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        if wd != 0:
            torch._foreach_mul_(ctx.params, 1.0 - ctx.group["lr"] * wd)
        return u


@dataclass(frozen=True)
class Momentum:
    """Heavy ball without dampening, as ``torch.optim.SGD``: ``m <- mu m + u`` (``m_0 = u_0``); ``u <- m``."""

    name: str = field(default="momentum", kw_only=True)
    BUFFER: ClassVar[str] = "buffer"

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        mu = ctx.group["momentum"]
        if mu == 0:
            return u
        bufs = ctx.zeros(self.BUFFER)  # 0 * mu + u == u exactly: the first step copies u
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, u)
        ctx.owned = False  # u now aliases the momentum buffers
        return bufs


@dataclass(frozen=True)
class LionSign:
    """Lion (Chen et al. 2023): ``u = sign(b1 m + (1 - b1) g)``, then ``m <- b2 m + (1 - b2) g``."""

    beta1: float = 0.9
    beta2: float = 0.99
    name: str = field(default="lion", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        m = ctx.zeros("exp_avg")
        direction = torch._foreach_lerp(m, u, 1.0 - self.beta1)
        torch._foreach_sign_(direction)
        torch._foreach_lerp_(m, u, 1.0 - self.beta2)
        ctx.owned = True
        return direction


@dataclass(frozen=True)
class AdaBoundStep:
    """AdaBound (Luo et al. 2019): Adam's per-element step size clipped into bounds that close in on
    ``final_lr`` (scaled with the group's schedule, as the reference does).

    The chain multiplies by ``lr`` at the end, so the step size and bounds are expressed relative to it:
    ``u = clip(sqrt(bc2) / bc1 / (sqrt(v) + eps), lo / lr, hi / lr) * m``.
    """

    beta1: float = 0.9
    beta2: float = 0.999
    final_lr: float = 0.01
    gamma: float = 1e-3
    eps: float = 1e-8
    name: str = field(default="adabound", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        key = ctx.key("step")
        for st in ctx.states:  # per-tensor step counts, as the reference: a late first gradient starts at 1
            st[key] = st.get(key, 0) + 1
        steps = [st[key] for st in ctx.states]
        m, v = ctx.zeros("exp_avg"), ctx.zeros("exp_avg_sq")
        torch._foreach_lerp_(m, u, 1.0 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, u, u, 1.0 - self.beta2)
        final = self.final_lr / ctx.group["base_lr"]
        step = torch._foreach_sqrt(v)
        torch._foreach_add_(step, self.eps)
        torch._foreach_reciprocal_(step)
        torch._foreach_mul_(step, [math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t) for t in steps])
        torch._foreach_clamp_min_(step, [final * (1.0 - 1.0 / (self.gamma * t + 1.0)) for t in steps])
        torch._foreach_clamp_max_(step, [final * (1.0 + 1.0 / (self.gamma * t)) for t in steps])
        torch._foreach_mul_(step, m)
        ctx.owned = True
        return step

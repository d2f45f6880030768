"""LARS-style trust ratios: rescale each tensor's update by ``||p|| / ||update||``.

Norms are computed for the whole group with ``torch._foreach_norm`` and combined on the device: no host
synchronisation per tensor (the authors' code calls ``.item()`` on every norm).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .chain import Ctx, Transform
from .transforms import CoupledDecay

__all__ = ["TrustScaled", "LarsScale", "trust_ratio", "where_defined"]


def _norms(tensors: list[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors))


def where_defined(ratio: Tensor, p_norm: Tensor, u_norm: Tensor) -> Tensor:
    """The ratio where both norms are positive, 1 elsewhere (elementwise, on the device)."""
    return torch.where((p_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


def trust_ratio(p_norm: Tensor, u_norm: Tensor, coef: float, lo: float, hi: float) -> Tensor:
    """DALS's ``r = clamp(coef ||p|| / ||u||, lo, hi)``, 1 where either norm is 0 (any shape of norms:
    the foreach path passes a group's, the fused kernel one tensor's)."""
    return where_defined((coef * p_norm / u_norm).clamp(lo, hi), p_norm, u_norm)


@dataclass(frozen=True)
class TrustScaled:
    """DALS's trust ratio around the transform whose output it scales: ``r = clamp(coef ||p|| / ||u||,
    lo, hi)`` is *measured* on the update as it comes in (the filtered, decayed gradient), ``inner`` runs
    (momentum), and its output is scaled: ``p <- p - lr r m``, not the gradient that enters ``m``. One
    wrapper, so that measuring and scaling cannot be put in the wrong order.

    Groups with ``group["trust"] = False`` (biases and norms under ``exclude_norm_bias``) keep ``r = 1``.
    """

    inner: Transform
    coef: float = 0.02
    lo: float = 0.2
    hi: float = 5.0
    name: str = field(default="trust", kw_only=True)

    def children(self) -> tuple[Transform, ...]:
        return (self.inner,)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        if not ctx.group.get("trust", True):
            return ctx.apply(self.inner, u)
        scale = trust_ratio(_norms(ctx.params), _norms(u), self.coef, self.lo, self.hi).unbind(0)
        u = ctx.writable(ctx.apply(self.inner, u))
        torch._foreach_mul_(u, scale)
        return u


@dataclass(frozen=True)
class LarsScale:
    """LARS (You et al. 2017; timm's ``Lars``): ``r = coef ||p|| / (||g|| + wd ||p|| + eps)`` from the raw
    gradient, then ``u <- r (g + wd p)``; the decay is part of the rule, so no separate decay transform."""

    coef: float = 0.02
    eps: float = 1e-8
    name: str = field(default="lars", kw_only=True)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        p_norm, g_norm = _norms(ctx.params), _norms(u)
        ratio = self.coef * p_norm / (g_norm + wd * p_norm + self.eps)
        scale = where_defined(ratio, p_norm, g_norm).unbind(0)
        u = ctx.writable(CoupledDecay()(u, ctx))
        torch._foreach_mul_(u, scale)
        return u

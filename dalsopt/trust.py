"""LARS-style trust ratios: rescale each tensor's update by ``||p|| / ||update||``.

Norms are computed for the whole group with ``torch._foreach_norm`` and combined on the device: no host
synchronisation per tensor (the authors' code calls ``.item()`` on every norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .chain import Ctx
from .transforms import CoupledDecay

__all__ = ["TrustRatio", "ScaleByTrust", "LarsScale"]


def _norms(tensors: list[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors))


def _where_defined(ratio: Tensor, p_norm: Tensor, u_norm: Tensor) -> list[Tensor]:
    """The ratio where both norms are positive, 1 elsewhere, as one 0-d tensor per parameter."""
    ok = (p_norm > 0) & (u_norm > 0)
    return list(torch.where(ok, ratio, torch.ones_like(ratio)).unbind(0))


@dataclass(frozen=True)
class TrustRatio:
    """DALS's ratio ``r = clamp(coef ||p|| / ||u||, lo, hi)``, *measured* on the update as it stands
    (the filtered, decayed gradient) and kept for ``ScaleByTrust``, which applies it later in the chain:
    DALS scales the momentum buffer, ``p <- p - lr r m``, not the gradient that enters it.

    Groups with ``group["trust"] = False`` (biases and norms under ``exclude_norm_bias``) keep ``r = 1``.
    """

    coef: float = 0.02
    lo: float = 0.2
    hi: float = 5.0

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        if ctx.group.get("trust", True):
            p_norm, u_norm = _norms(ctx.params), _norms(u)
            ratio = (self.coef * p_norm / u_norm).clamp(self.lo, self.hi)
            ctx.scratch["trust"] = _where_defined(ratio, p_norm, u_norm)
        return u


@dataclass(frozen=True)
class ScaleByTrust:
    """``u <- r u`` with the ratios ``TrustRatio`` measured earlier in this step (no-op without them)."""

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        ratio = ctx.scratch.get("trust")
        if ratio is None:
            return u
        u = ctx.writable(u)
        torch._foreach_mul_(u, ratio)
        return u


@dataclass(frozen=True)
class LarsScale:
    """LARS (You et al. 2017; timm's ``Lars``): ``r = coef ||p|| / (||g|| + wd ||p|| + eps)`` from the raw
    gradient, then ``u <- r (g + wd p)``; the decay is part of the rule, so no separate decay transform."""

    coef: float = 0.02
    eps: float = 1e-8

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        p_norm, g_norm = _norms(ctx.params), _norms(u)
        ratio = self.coef * p_norm / (g_norm + wd * p_norm + self.eps)
        scale = _where_defined(ratio, p_norm, g_norm)
        u = ctx.writable(CoupledDecay()(u, ctx))
        torch._foreach_mul_(u, scale)
        return u

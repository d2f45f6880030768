"""Optimizers that wrap another one: SAM (two passes per step) and Lookahead (slow weights).

A wrapper shares the base optimizer's ``param_groups``, so an LR scheduler attached to the wrapper
scales the base's rates, and a training loop reads one set of groups. Its own per-parameter state
(SAM's perturbation, Lookahead's slow weights) is kept apart from the base's and saved beside it.
Wrappers step like every dalsopt optimizer, ``step(closure=None, *, loss=None)``, and pass the loss on
to their base (so ``Lookahead`` around a DALS chain still feeds its phase detector).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .loss import TakesLoss

__all__ = ["Wrapper", "SAM", "Lookahead"]


class Wrapper(TakesLoss, torch.optim.Optimizer):
    """Base class: share ``base.param_groups``; ``state_dict`` = the base's + the wrapper's own."""

    def __init__(self, base: torch.optim.Optimizer, **defaults) -> None:
        super().__init__(base.param_groups, {**base.defaults, **defaults})
        self.base = base
        self.param_groups = base.param_groups

    def base_step(self, closure: Callable[[], Tensor] | None, loss: Tensor | float | None):
        """Step the base, handing it the loss if it takes one (torch's own classes do not)."""
        if isinstance(self.base, TakesLoss):
            return self.base.step(closure, loss=loss)
        return self.base.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "wrapper": super().state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict["base"])
        super().load_state_dict(state_dict["wrapper"])
        self.param_groups = self.base.param_groups  # loading made new group dicts: share again


class SAM(Wrapper):
    """Sharpness-aware minimisation (Foret et al. 2021; ``adaptive`` = ASAM, Kwon et al. 2021).

    ``step(closure)``: the gradients of the first pass are in ``p.grad``; move to
    ``w + e(w)``, ``e = rho T^2 g / ||T g||`` (``T = |w|`` if adaptive, else 1), re-evaluate with the
    closure (which must run forward and backward and return the loss), come back to ``w`` and let the
    base optimizer step with the sharpness-aware gradient.
    """

    needs_closure = True

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = True) -> None:
        super().__init__(base, rho=rho, adaptive=adaptive)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        """The base steps with the loss at ``w`` (passed or handed over), not the perturbed one."""
        loss = self.take_loss(loss)
        if closure is None:
            raise ValueError("SAM takes two passes per step: call s.step(closure=...) with a closure that "
                             "recomputes the loss and calls backward()")
        live = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        scaled = []
        for group, params in live:
            if any(p.grad.is_sparse for p in params):
                raise ValueError("sparse gradients are not supported by SAM: use dense layers")
            grads = [p.grad for p in params]
            scaled += torch._foreach_mul(grads, torch._foreach_abs(params)) if group["adaptive"] else grads
        if not scaled:
            return None
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        for group, params in live:
            if not params:
                continue
            e = torch._foreach_mul([p.grad for p in params], group["rho"] / (norm + 1e-12))
            if group["adaptive"]:
                square = torch._foreach_mul(params, params)
                torch._foreach_mul_(e, square)
            for p, e_p in zip(params, e):
                self.state[p]["e_w"] = e_p
            torch._foreach_add_(params, e)
        self.base.zero_grad(set_to_none=False)
        try:  # a closure that raises (an fp16 overflow skipping the step) leaves the weights at w
            with torch.enable_grad():
                perturbed = closure()
        finally:
            for group, params in live:
                if params:
                    torch._foreach_sub_(params, [self.state[p].pop("e_w") for p in params])
        self.base_step(None, loss)
        return perturbed


class Lookahead(Wrapper):
    """Lookahead (Zhang et al. 2019): every ``k`` steps of the base optimizer, ``slow += alpha (fast -
    slow)`` and the fast weights restart from the slow ones. The step count lives in the param group."""

    def __init__(self, base: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        super().__init__(base, k=k, alpha=alpha)
        for group in self.param_groups:
            group.setdefault("lookahead_step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        for group in self.param_groups:  # slow weights start at the initial weights
            for p in group["params"]:
                if "slow" not in self.state[p]:
                    self.state[p]["slow"] = p.detach().clone()
        loss = self.base_step(closure, self.take_loss(loss))
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["k"]:
                continue
            params = list(group["params"])
            slow = [self.state[p]["slow"] for p in params]
            torch._foreach_lerp_(slow, params, group["alpha"])
            torch._foreach_copy_(params, slow)
        return loss

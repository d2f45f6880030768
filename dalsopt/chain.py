"""``Chain``: one ``torch.optim.Optimizer`` whose step applies a list of gradient transforms.

The optax idea in torch clothing: a transform maps the update direction ``u`` of one parameter group
(a list of tensors, starting as the gradients) to a new one, using ``torch._foreach_*`` over the whole
group at once; the chain ends with ``p <- p - lr * u``. DALS, Grokfast, LARS, Lion and AdaBound are all
short compositions of the transforms in ``filters``, ``trust`` and ``transforms``.

Per-parameter buffers live in ``optimizer.state[p]`` (allocated lazily), per-group counters in the
param group (``group["step"]``), and optimizer-wide state in *monitors* (the DALS loss-phase detector),
which see the loss before each step and are saved in ``state_dict`` too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

__all__ = ["Chain", "Ctx", "Transform", "Monitor"]


@dataclass
class Ctx:
    """What a transform may read and keep while updating one parameter group."""

    params: list[Tensor]
    states: list[dict]
    group: dict
    owned: bool = False  # whether ``u`` is a fresh buffer the transform may overwrite
    scratch: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Updates this group had before the current one (0 on the first step)."""
        return self.group["step"]

    def buffer(self, key: str, init: Callable[[Tensor, int], Tensor]) -> list[Tensor]:
        """The per-parameter state tensors under ``key``, created with ``init(param, i)`` on first use."""
        out = []
        for i, (p, st) in enumerate(zip(self.params, self.states)):
            if key not in st:
                st[key] = init(p, i)
            out.append(st[key])
        return out

    def zeros(self, key: str) -> list[Tensor]:
        return self.buffer(key, lambda p, _: torch.zeros_like(p, memory_format=torch.preserve_format))

    def writable(self, u: list[Tensor]) -> list[Tensor]:
        """``u`` if it is already a private buffer, else a copy: transforms never write into ``p.grad``."""
        if self.owned:
            return u
        self.owned = True
        return torch._foreach_mul(u, 1.0)


class Transform(Protocol):
    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        """Return the new update direction for ``ctx.params`` (mark ``ctx.owned`` if it is new memory)."""


class Monitor(Protocol):
    def observe(self, loss: float | None) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def _sparse_error(group: dict) -> ValueError:
    return ValueError(
        f"sparse gradients are not supported (parameter group of block {group.get('block', '?')}): "
        "use dense layers, e.g. nn.Embedding(..., sparse=False)"
    )


class Chain(torch.optim.Optimizer):
    """A torch optimizer built from transforms: ``u = t_n(...t_1(grad)); p -= lr * u`` per group."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        transforms: Sequence[Transform],
        *,
        lr: float,
        monitors: Sequence[Monitor] = (),
        **defaults: Any,
    ) -> None:
        super().__init__(params, {"lr": lr, **defaults})
        self.transforms = list(transforms)
        self.monitors = list(monitors)
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
            loss = closure_loss if loss is None else loss
        for monitor in self.monitors:
            monitor.observe(None if loss is None else float(loss))
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise _sparse_error(group)
            ctx = Ctx(params, [self.state[p] for p in params], group)
            u = grads
            for transform in self.transforms:
                u = transform(u, ctx)
            torch._foreach_add_(params, u, alpha=-group["lr"])
            group["step"] += 1
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["monitors"] = [m.state_dict() for m in self.monitors]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        monitors = state_dict.pop("monitors", [])
        if len(monitors) != len(self.monitors):
            raise ValueError(f"state_dict has {len(monitors)} monitor states, this optimizer has {len(self.monitors)}")
        super().load_state_dict(state_dict)
        for monitor, state in zip(self.monitors, monitors):
            monitor.load_state_dict(state)

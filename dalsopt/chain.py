"""``Chain``: one ``torch.optim.Optimizer`` whose step applies a list of gradient transforms.

The optax idea in torch clothing: a transform maps the update direction ``u`` of one parameter group
(a list of tensors, starting as the gradients) to a new one, using ``torch._foreach_*`` over the whole
group at once; the chain ends with ``p <- p - lr * u``. DALS, Grokfast, LARS, Lion and AdaBound are all
short compositions of the transforms in ``filters``, ``trust``, ``transforms`` and ``phase``.

State, as in optax's ``chain``, belongs to the transform that made it: per-parameter buffers live in
``optimizer.state[p]`` under ``"<transform name>.<buffer>"`` (allocated lazily), per-group counters in the
param group (``group["step"]``), and a transform with a ``begin`` hook (DALS's phase detector) keeps
optimizer-wide state under its name in ``state_dict()["transforms"]``. What one step knows beyond the
gradients (the loss, the phase) reaches transforms through the step context, never through shared
objects.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from . import legacy
from .loss import TakesLoss

__all__ = ["Chain", "Ctx", "EndsStep", "StepContext", "Transform", "StepTransform"]


@dataclass
class StepContext:
    """What one optimizer step knows beyond the gradients, shared by every group: the loss handed over
    (``None`` when none came) and what a step-level transform publishes for later ones (DALS's phase)."""

    loss: Tensor | None = None
    phase: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memo: dict = field(default_factory=dict)

    def once(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per step (per ``key``): values every group shares, such as the
        filter coefficient of the current phase."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class Ctx:
    """What a transform may read and keep while updating one parameter group.

    ``name`` is the transform being applied (set by ``apply``): its buffers are ``states[i]["name.key"]``.
    ``owned`` says whether ``u`` is a fresh buffer a transform may overwrite (never ``p.grad``).
    ``applied`` is set by a fused transform that updates the parameters itself (it must be last; it may do
    so in its ``end``, after every group).
    """

    params: list[Tensor]
    states: list[dict]
    group: dict
    shared: StepContext = field(default_factory=StepContext)
    name: str = ""
    owned: bool = False
    applied: bool = False

    @property
    def step(self) -> int:
        """Updates this group had before the current one (0 on the first step)."""
        return self.group["step"]

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def buffer(self, key: str, init: Callable[[Tensor, int], Tensor]) -> list[Tensor]:
        """The current transform's per-parameter tensors under ``key``, made with ``init(param, i)`` on first use."""
        full = self.key(key)
        out = []
        for i, (p, st) in enumerate(zip(self.params, self.states)):
            if full not in st:
                st[full] = init(p, i)
            out.append(st[full])
        return out

    def zeros(self, key: str) -> list[Tensor]:
        return self.buffer(key, lambda p, _: torch.zeros_like(p, memory_format=torch.preserve_format))

    def writable(self, u: list[Tensor]) -> list[Tensor]:
        """``u`` if it is already a private buffer, else a copy: transforms never write into ``p.grad``."""
        if self.owned:
            return u
        self.owned = True
        return torch._foreach_mul(u, 1.0)

    @contextmanager
    def within(self, transform: "Transform") -> Iterator[None]:
        """Buffers made or read inside belong to ``transform`` (restored afterwards, for wrappers)."""
        outer, self.name = self.name, transform.name
        try:
            yield
        finally:
            self.name = outer

    def apply(self, transform: "Transform", u: list[Tensor]) -> list[Tensor]:
        """Run ``transform`` on ``u`` with its own state namespace."""
        with self.within(transform):
            return transform(u, self)


class Transform(Protocol):
    """A gradient transformation of one group; ``name`` keys its state and must be unique in a chain."""

    name: str

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        """Return the new update direction for ``ctx.params`` (mark ``ctx.owned`` if it is new memory)."""


@runtime_checkable
class StepTransform(Protocol):
    """A transform that also acts once per optimizer step, before any group (DALS's phase detector).

    ``state`` is its optimizer-wide state (saved in ``state_dict``); it may publish on ``shared``.
    """

    name: str

    def begin(self, shared: StepContext, state: dict) -> None: ...


@runtime_checkable
class EndsStep(Protocol):
    """A transform that finishes its work once per step, after every group: the fused DALS step queues
    each group's tensors while the groups run and updates them all together in ``end``."""

    name: str

    def end(self, shared: StepContext) -> None: ...


def _names(transforms: Sequence[Transform]) -> Iterator[str]:
    """Every transform's name, the ones it wraps or fuses (``children()``) included."""
    for t in transforms:
        yield t.name
        children = getattr(t, "children", None)
        if children is not None:
            yield from _names(children())


def _sparse_error(group: dict) -> ValueError:
    return ValueError(
        f"sparse gradients are not supported (parameter group of block {group.get('block', '?')}): "
        "use dense layers, e.g. nn.Embedding(..., sparse=False)"
    )


class Chain(TakesLoss, torch.optim.Optimizer):
    """A torch optimizer built from transforms: ``u = t_n(...t_1(grad)); p -= lr * u`` per group."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        transforms: Sequence[Transform],
        *,
        lr: float,
        **defaults: Any,
    ) -> None:
        super().__init__(params, {"lr": lr, **defaults})
        self.transforms = list(transforms)
        names = list(_names(self.transforms))
        if len(set(names)) != len(names):
            raise ValueError(f"transform names must be unique in a chain (they key its state), got {names}")
        self._begins = [t for t in self.transforms if isinstance(t, StepTransform)]
        self._ends = [t for t in self.transforms if isinstance(t, EndsStep)]
        self.chain_state: dict[str, dict] = {t.name: {} for t in self._begins}
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        """One update of every group. The loss (``loss=``, else the closure's, else one handed over with
        ``dalsopt.observe_loss``) reaches the transforms through the step context."""
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
            loss = closure_loss if loss is None else loss
        loss = self.take_loss(loss)
        shared = StepContext(loss=loss, device=self.param_groups[0]["params"][0].device)
        for t in self._begins:
            t.begin(shared, self.chain_state[t.name])
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise _sparse_error(group)
            ctx = Ctx(params, [self.state[p] for p in params], group, shared)
            u = grads
            for transform in self.transforms:
                if ctx.applied:
                    raise ValueError(f"{transform.name!r} comes after a fused transform that updated the parameters")
                u = ctx.apply(transform, u)
            if not ctx.applied:
                torch._foreach_add_(params, u, alpha=-group["lr"])
            group["step"] += 1
        for t in self._ends:
            t.end(shared)
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["transforms"] = {name: dict(state) for name, state in self.chain_state.items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = legacy.upgrade(dict(state_dict), list(_names(self.transforms)))
        saved = state_dict.pop("transforms", {})
        if set(saved) != set(self.chain_state):
            raise ValueError(f"state_dict has step state for {sorted(saved)}, this chain for {sorted(self.chain_state)}")
        super().load_state_dict(state_dict)
        for name, state in saved.items():
            self.chain_state[name].clear()
            self.chain_state[name].update(state)

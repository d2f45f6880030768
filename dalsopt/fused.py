"""DALS's update fused: filter, blend, coupled decay, trust ratio, momentum and ``p -= lr r m`` of one
tensor in two passes over memory, the first compiled (``torch.compile``: C++/OpenMP on CPU, Triton on
CUDA).

The foreach path sweeps over a group's memory about 23 tensor-lengths per step (each ``torch._foreach_*``
reads and writes whole tensors); the fused one 9, the floor by bytes moved (AdamW's fused kernel: 7):
pass 1, compiled, reads g, p, f, m, writes f and m and reduces both norms; pass 2, which needs those
norms complete, reads p and m and writes p (torch's in-place foreach kernel, faster than a compiled
one here; as one compiled function inductor would recompute the update in a third sweep). Same state
under the same keys as the composed transforms (it is built from them), so a checkpoint moves between
``fused=True`` and the foreach path.

Each group only queues its tensors; the chain's ``end`` hook then runs them all, every group's
together, through the compiled pass in chunks of ``CHUNK`` and through one foreach pass 2 (measured on
24 768x768 blocks, 48 groups: one compiled call per group cost about a quarter of the step; a graph per
chunk length, flattened to 1-D with dynamic sizes, serves any model). The per-group numbers (rate,
decay, momentum, phase weights) come per tensor; the phase comes in as
numbers (CPU) or 0-d device tensors, so phase changes and the schedule's rates never recompile. Where
``torch.compile`` cannot build (no compiler, an unsupported platform) the same maths run eagerly, with
one warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .chain import Ctx, StepContext, Transform
from .filters import DepthFilter
from .transforms import CoupledDecay, Momentum
from .trust import TrustScaled, trust_ratio

__all__ = ["FusedDALS", "filter_momentum", "first_pass", "second_pass"]


def filter_momentum(p: Tensor, g: Tensor, f: Tensor, m: Tensor, weight: float | Tensor, blend: float | Tensor,
                    wd: float, mu: float, coef: float, lo: float, hi: float, *,
                    momentum: bool, trust: bool) -> tuple[Tensor, Tensor | float]:
    """Pass 1 over one tensor: ``f <- lerp(f, g, weight)``; ``u = lerp(f, g, blend) + wd p``;
    ``r = trust_ratio(||p||, ||u||)``; ``m <- mu m + u``. Returns (the direction, ``r``): ``m``, or ``u``
    without momentum; ``r = 1`` without trust. One read of g, p, f, m and one write of f, m."""
    f.add_((g - f) * weight)  # lerp written out: torch.lerp's scalar weight would recompile per value
    u = f + (g - f) * blend + wd * p
    r = trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u), coef, lo, hi) if trust else 1.0
    if not momentum:
        return u, r
    m.mul_(mu).add_(u)
    return m, r


def first_pass(ps: list[Tensor], gs: list[Tensor], fs: list[Tensor], ms: list[Tensor], weights: list, blends: list,
               wds: list[float], mus: list[float], coef: float, lo: float, hi: float, *,
               momentum: bool, trust: bool) -> tuple[list[Tensor], list[Tensor | float]]:
    """``filter_momentum`` over a chunk of tensors, which may come from several groups (one compiled
    call for several; the per-group numbers come per tensor)."""
    out = [filter_momentum(p, g, f, m, w, b, wd, mu, coef, lo, hi, momentum=momentum, trust=trust)
           for p, g, f, m, w, b, wd, mu in zip(ps, gs, fs, ms, weights, blends, wds, mus)]
    return [d for d, _ in out], [r for _, r in out]


def second_pass(ps: list[Tensor], directions: list[Tensor], lrs: list[float], rs: list[Tensor | float]) -> None:
    """Pass 2: ``p <- p - lr r direction``, after every norm of pass 1 is complete. torch's own in-place
    foreach kernels (here they move memory faster than a compiled pass would): one call for the tensors
    with a trust ratio, one per learning rate for those without (``r = 1``)."""
    scaled = [i for i, r in enumerate(rs) if not isinstance(r, float)]
    if scaled:
        torch._foreach_addcmul_([ps[i] for i in scaled], [directions[i] for i in scaled],
                                torch._foreach_mul([rs[i] for i in scaled], [-lrs[i] for i in scaled]))
    plain: dict[float, list[int]] = {}
    for i, r in enumerate(rs):
        if isinstance(r, float):
            plain.setdefault(lrs[i], []).append(i)
    for lr, idx in plain.items():
        torch._foreach_add_([ps[i] for i in idx], [directions[i] for i in idx], alpha=-lr)


CHUNK = 8  # tensors per compiled call: graphs for chunk lengths 1..8 serve any model
_KERNELS: dict[str, Callable[..., tuple]] = {"meta": first_pass}  # meta: nothing to compile for


def _compile_errors() -> tuple[type[Exception], ...]:
    """torch.compile's own errors; looked up when one is raised, so importing dalsopt does not import
    torch._dynamo (seconds of every process's start-up: each sweep driver and trial worker)."""
    return (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)


def _eager_from_now(device: torch.device, exc: Exception) -> Callable[..., tuple]:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"dalsopt: torch.compile failed on {device.type} ({type(exc).__name__}: {first}); the fused "
                  "DALS step runs eagerly there (slower, same results)", RuntimeWarning, stacklevel=5)
    _KERNELS[device.type] = first_pass
    return first_pass


def _kernel(device: torch.device) -> Callable[..., tuple]:
    """Pass 1 compiled for ``device``'s type (sizes dynamic: a graph per chunk length and flags)."""
    if device.type not in _KERNELS:
        try:
            _KERNELS[device.type] = torch.compile(first_pass, dynamic=True, fullgraph=True)
        except RuntimeError as exc:  # no dynamo on this platform / Python
            return _eager_from_now(device, exc)
    return _KERNELS[device.type]


def _first_pass(device: torch.device, chunks: list[tuple], scalars: tuple, flags: dict
                ) -> tuple[list[Tensor], list[Tensor | float]]:
    """Pass 1 over every chunk, compiled; eager (same maths) on a device where compiling failed, said once
    per device type. Errors of the update itself propagate."""
    kernel = _kernel(device)
    directions: list[Tensor] = []
    rs: list[Tensor | float] = []
    with torch._dynamo.config.patch(recompile_limit=64):  # chunk lengths x flags x dtypes, all legitimate
        for chunk in chunks:
            try:
                d, r = kernel(*chunk, *scalars, **flags)
            except _compile_errors() as exc:
                if kernel is first_pass:
                    raise
                kernel = _eager_from_now(device, exc)
                d, r = kernel(*chunk, *scalars, **flags)
            directions += d
            rs += r
    return directions, rs


def _flat(t: Tensor, like: Tensor) -> Tensor:
    """``t`` as a 1-D view where parameter ``like`` is contiguous (so sizes are all that varies; a
    gradient with other strides is copied, it is only read), else as it is."""
    return t.reshape(-1) if like.is_contiguous() else t


def _per_tensor(value: float | list[Tensor], n: int) -> list:
    return [value] * n if isinstance(value, float) else value


@dataclass(frozen=True)
class FusedDALS:
    """``DepthFilter -> CoupledDecay -> TrustScaled(Momentum)`` as one transform that updates the
    parameters itself. It is made of those transforms (their names key the same buffers) and must be
    the last of its chain, after the ``PhaseDetector``."""

    filter: DepthFilter
    decay: CoupledDecay
    trust: TrustScaled
    name: str = field(default="fused", kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.trust.inner, Momentum):
            raise ValueError("FusedDALS fuses TrustScaled(Momentum()): another inner transform is not supported")

    def children(self) -> tuple[Transform, ...]:
        return (self.filter, self.decay, self.trust)

    def __call__(self, u: list[Tensor], ctx: Ctx) -> list[Tensor]:
        """Queue this group's tensors for ``end`` (which updates them with every other group's, in
        fewer and fuller compiled calls: the per-call cost, not the memory, was most of a step's
        excess over AdamW's fused kernel on many small groups)."""
        weight, blend = self.filter.coefficients(ctx, u)
        with ctx.within(self.filter):
            filters = ctx.zeros(DepthFilter.BUFFER)
        group = ctx.group
        momentum = group["momentum"] != 0
        with ctx.within(self.trust.inner):
            bufs = ctx.zeros(Momentum.BUFFER) if momentum else filters  # unused without momentum
        n = len(u)
        first = ctx.params[0]  # a batch per device, dtype and flags: each chunk one graph's inputs
        flags = (first.device, first.dtype, momentum, bool(group.get("trust", True)))

        def flat(tensors: list[Tensor]) -> list[Tensor]:
            return [_flat(x, p) for x, p in zip(tensors, ctx.params)]

        columns = (flat([p.detach() for p in ctx.params]), flat(u), flat(filters), flat(bufs),
                   _per_tensor(weight, n), _per_tensor(blend, n), [group["weight_decay"]] * n,
                   [group["momentum"]] * n, [group["lr"]] * n)
        queued = ctx.shared.once(self.name, dict)  # flags -> columns, taken by end()
        if flags not in queued:
            queued[flags] = tuple([] for _ in columns)
        for queue, column in zip(queued[flags], columns):
            queue += column
        ctx.applied = True
        return u

    def end(self, shared: StepContext) -> None:
        """Update every queued tensor: pass 1 in chunks of ``CHUNK`` across groups, then pass 2."""
        t = self.trust
        for (device, _, momentum, trust), (*columns, lrs) in shared.memo.pop(self.name, {}).items():
            n = len(columns[0])
            chunks = [tuple(column[lo:lo + CHUNK] for column in columns) for lo in range(0, n, CHUNK)]
            directions, rs = _first_pass(device, chunks, (t.coef, t.lo, t.hi),
                                         dict(momentum=momentum, trust=trust))
            second_pass(columns[0], directions, lrs, rs)

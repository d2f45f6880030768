"""Learning-rate schedules as pure functions of the step.

Each schedule is a frozen dataclass whose ``__call__(step) -> multiplier`` gives the factor applied to a
group's base learning rate at optimizer step ``step`` (counted from 0). Dataclasses, not lambdas, so that
a ``LambdaLR`` built on them pickles (Ray ships trials between processes) and round-trips through
``state_dict``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Constant",
    "Cosine",
    "WarmupCosine",
    "WarmRestarts",
    "SlantedTriangular",
    "Scaled",
    "PerEpoch",
]


@dataclass(frozen=True)
class Constant:
    """Multiplier 1 at every step (Gen1: a fixed learning rate)."""

    def __call__(self, step: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from 1 to ``floor`` over ``total`` steps, as ``CosineAnnealingLR(T_max=total)``.

    ``floor`` is eta_min / eta; the closed form is ``floor + (1 - floor) (1 + cos(pi t / T)) / 2``.
    """

    total: int
    floor: float = 0.0

    def __call__(self, step: int) -> float:
        return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * step / self.total)) / 2.0


@dataclass(frozen=True)
class WarmupCosine:
    """DALS's schedule: linear warmup over ``warmup`` steps (a float, as the authors' code), then a cosine
    from 1 to 0 over the remaining steps. With ``warmup > 0`` step 0 gets 0, as in the code."""

    total: int
    warmup: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        span = self.total - self.warmup
        progress = 1.0 if span <= 0 else min(1.0, (step - self.warmup) / span)
        return (1.0 + math.cos(math.pi * progress)) / 2.0


@dataclass(frozen=True)
class WarmRestarts:
    """SGDR (Loshchilov and Hutter 2017): cosine from 1 to ``floor`` within each cycle; the first cycle
    lasts ``t0`` steps, each next one ``t_mult`` times longer. Equals ``CosineAnnealingWarmRestarts``."""

    t0: int
    t_mult: int = 1
    floor: float = 0.0

    def position(self, step: int) -> tuple[int, int, int]:
        """(cycle index, step within the cycle, cycle length) of ``step``."""
        if self.t_mult == 1:
            return step // self.t0, step % self.t0, self.t0
        cycle, start, length = 0, 0, self.t0
        while step >= start + length:
            start += length
            length *= self.t_mult
            cycle += 1
        return cycle, step - start, length

    def __call__(self, step: int) -> float:
        _, t_cur, length = self.position(step)
        return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * t_cur / length)) / 2.0


@dataclass(frozen=True)
class SlantedTriangular:
    """STLR (Howard and Ruder 2018), AllenNLP's form: a short linear rise over ``cut = floor(cut_frac T)``
    steps, then a long linear decay; the multiplier runs from 1/ratio to 1 and back.

    ``ulmfit=True`` is the paper's eq. 3 as the authors' ``STLRScheduler`` computes it: ``cut = max(1,
    floor(cut_frac T))`` and the decay spans ``cut (1/cut_frac - 1)`` steps, which equals ``T - cut`` only
    when ``cut_frac T`` is whole (T = 15: a span of 9, not 14, so the rate is back at 1/ratio by step 10).
    """

    total: int
    cut_frac: float = 0.1
    ratio: float = 32.0
    ulmfit: bool = False

    def __call__(self, step: int) -> float:
        cut = math.floor(self.cut_frac * self.total)
        if self.ulmfit:
            cut = max(1, cut)
            span = cut * (1.0 / self.cut_frac - 1.0) if self.cut_frac > 0 else self.total - cut
        else:
            span = self.total - cut
        if step < cut:
            p = step / cut
        else:
            p = 1.0 - (step - cut) / max(1, span)
        p = max(0.0, p)
        return (1.0 + (self.ratio - 1.0) * p) / self.ratio


@dataclass(frozen=True)
class Scaled:
    """Another schedule times a constant factor: the authors' STLR scheduler applies the discriminative
    factor a second time this way (``stlr-discriminative`` with ``double_decay=True``)."""

    inner: object
    factor: float

    def __call__(self, step: int) -> float:
        return self.factor * self.inner(step)  # type: ignore[operator]


@dataclass(frozen=True)
class PerEpoch:
    """Another schedule stepped once per epoch, the way the authors' training loop drives its STLR: it
    calls the scheduler ``steps_per_epoch`` times after each epoch, so the rate holds for a whole epoch,
    epoch ``e >= 1`` at ``inner(e * steps_per_epoch)``; epoch 0 runs before the first scheduler call, at
    the param groups' own rates (multiplier 1, whatever ``inner(0)`` is)."""

    inner: object
    steps_per_epoch: int

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return 1.0 if epoch == 0 else self.inner(epoch * self.steps_per_epoch)  # type: ignore[operator]

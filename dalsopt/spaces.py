"""Search spaces: the few hyperparameters worth searching per strategy, declared once in its registry row.

A space is a dict of ``Dim`` (plain data, Optuna's conventions: ``type`` float/int/categorical, ``low``,
``high``, ``log``, ``step``, ``choices``), so a sampler maps it without dalsopt importing one::

    for name, d in dalsopt.search_space("dals", "finetune").items():
        hp[name] = getattr(trial, f"suggest_{d.type}")(name, **d.kwargs())   # Optuna define-by-run

A row may declare a dimension as ``Around(down, up)``: a log range around the regime's default
(default/down .. default*up). Every row gets ``lr = Around()`` unless it declares its own, so a rate's
range follows the regime (SGD's 0.01 from scratch, 5e-4 when fine-tuning).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = ["Dim", "Around", "Declared", "resolve_space"]

Choice = Union[bool, int, float, str]


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space; the field names are Optuna's distribution arguments."""

    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Choice, ...] | None = None

    def __post_init__(self) -> None:
        where = f"search dimension {self}"
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError(f"{where}: a categorical dimension takes a non-empty `choices` only")
            return
        if self.type not in ("float", "int"):
            raise ValueError(f"{where}: type must be float, int or categorical")
        if self.choices is not None or self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{where}: needs low <= high and no `choices`")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError(f"{where}: a log scale needs low > 0 and no step")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high)):
            raise ValueError(f"{where}: an int dimension needs whole bounds")

    @classmethod
    def real(cls, low: float, high: float, *, log: bool = False, step: float | None = None) -> Dim:
        return cls("float", float(low), float(high), log, step)

    @classmethod
    def integer(cls, low: int, high: int, *, log: bool = False) -> Dim:
        return cls("int", low, high, log)

    @classmethod
    def choice(cls, *choices: Choice) -> Dim:
        return cls("categorical", choices=tuple(choices))

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of Optuna's ``suggest_<type>`` / ``<Type>Distribution``."""
        if self.type == "categorical":
            return {"choices": self.choices}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out

    def edges(self) -> tuple:
        """The points at the boundary: (low, high), or every choice."""
        return tuple(self.choices) if self.type == "categorical" else (self.low, self.high)


@dataclass(frozen=True)
class Around:
    """A log range around the regime's default: default/down .. default*up (whole numbers for an int)."""

    down: float = 10.0
    up: float = 10.0

    def dim(self, default: Any, where: str) -> Dim:
        if isinstance(default, bool) or not isinstance(default, (int, float)) or default <= 0:
            raise ValueError(f"{where}: a range around the default needs a positive number, not {default!r}")
        if isinstance(default, int):
            return Dim.integer(max(1, math.floor(default / self.down)), math.ceil(default * self.up), log=True)
        return Dim.real(_round(default / self.down), _round(default * self.up), log=True)


def _round(x: float) -> float:
    """Six significant digits: 3e-4 / 10 is 3e-05, not 2.9999999999999997e-05."""
    return float(f"{x:.6g}")


Declared = dict[str, Union[Dim, Around]]
LR = Around()


def resolve_space(strategy: str, declared: Declared, defaults: dict) -> dict[str, Dim]:
    """A row's declared space against one regime's hyperparameters: ``lr`` first, then the rest."""
    out: dict[str, Dim] = {}
    for key, dim in {"lr": LR, **declared}.items():
        where = f"search space of {strategy!r}, {key!r}"
        if key not in defaults:
            raise ValueError(f"{where}: not a hyperparameter of {strategy!r}")
        out[key] = dim.dim(defaults[key], where) if isinstance(dim, Around) else dim
    return out

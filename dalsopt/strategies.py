"""The registry: the paper's 18 strategies, one row each, read top to bottom in generation order.

A row is (id, name, generation, builder, defaults, fine-tuning overrides). A builder turns depth-ordered
blocks and hyperparameters into ``(optimizer, schedule)``; ``make`` validates the input, adds the LR
scheduler and returns a ``Strategy``. Adding a strategy is adding a row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from . import presets, torch_optim
from .chain import Chain
from .dals import DALS_DEFAULTS, build_dals, build_dals_acc, build_dals_fast
from .filters import GrokfastEMA
from .groups import Block, Grouping, blocks as make_blocks
from .param_groups import discriminative, param_groups
from .spaces import Around, Declared, Dim, resolve_space
from .schedules import Cosine, PerEpoch, Scaled, SlantedTriangular, WarmRestarts
from .transforms import AdaBoundStep, CoupledDecay, DecoupledDecay, LionSign, Momentum
from .trust import LarsScale
from .wrappers import SAM, Lookahead

__all__ = ["Entry", "Strategy", "REGISTRY", "GENERATIONS", "names", "make", "entry", "resolve", "search_space"]

REGIMES = ("scratch", "finetune")


# --- builders: (blocks, hp, total_steps) -> (optimizer, schedule | [schedule per group] | None) ---

def _sgd(blocks: list[Block], hp: dict, factor=None) -> torch_optim.SGD:
    groups = param_groups(blocks, hp["lr"], factor=factor)
    return torch_optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def _disc(hp: dict):
    return discriminative(hp["decay_factor"])


def build_sgd(blocks, hp, total):
    return _sgd(blocks, hp), None


def build_cosine(blocks, hp, total):
    floor = hp["eta_min"] / hp["lr"] if hp["lr"] > 0 else 0.0
    return _sgd(blocks, hp), Cosine(total, floor)


def build_sgdr(blocks, hp, total):
    floor = hp["eta_min"] / hp["lr"] if hp["lr"] > 0 else 0.0
    return _sgd(blocks, hp), WarmRestarts(hp["t0"], hp["t_mult"], floor)


def build_torch(cls: type, blocks, hp, total):
    """Gen3 baselines are torch's own classes."""
    kwargs = {k: (tuple(v) if k == "betas" else v) for k, v in hp.items()}
    return cls(param_groups(blocks, hp["lr"]), **kwargs), None


def build_adabound(blocks, hp, total):
    step = AdaBoundStep(hp["beta1"], hp["beta2"], hp["final_lr"], hp["gamma"], hp["eps"])
    groups = param_groups(blocks, hp["lr"])
    return Chain(groups, [CoupledDecay(), step], lr=hp["lr"], weight_decay=hp["weight_decay"]), None


def build_lion(blocks, hp, total):
    groups = param_groups(blocks, hp["lr"])
    transforms = [DecoupledDecay(), LionSign(hp["beta1"], hp["beta2"])]
    return Chain(groups, transforms, lr=hp["lr"], weight_decay=hp["weight_decay"]), None


def build_lars(blocks, hp, total):
    groups = param_groups(blocks, hp["lr"])
    transforms = [LarsScale(hp["trust_coef"], hp["eps"]), Momentum()]
    return Chain(groups, transforms, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]), None


def build_grokfast(blocks, hp, total):
    groups = param_groups(blocks, hp["lr"])
    transforms = [GrokfastEMA(hp["alpha"], hp["lamb"]), CoupledDecay(), Momentum()]
    return Chain(groups, transforms, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]), None


def build_discriminative(blocks, hp, total):
    return _sgd(blocks, hp, _disc(hp)), None


def build_stlr(blocks, hp, total, steps_per_epoch=None):
    """ULMFiT: discriminative groups + slanted triangular schedule. ``double_decay`` reproduces the
    authors' code, whose scheduler applies the 2.6^-k factor a second time. ``per_epoch`` reproduces how
    their loop steps it: once per epoch (``schedules.PerEpoch``), with their STLR arithmetic (ULMFiT's
    eq. 3), still over the run's T optimizer steps, sampled at each epoch's first step.

    Steps, not epochs, because their ``STLRScheduler`` gets T = total steps and their loop calls it
    ``steps_per_epoch`` times after each epoch (CodeOfMe/LearningRate, codes/Test_All.py). Over 10, 50 or
    80 epochs (the paper's budgets) that is, after epoch 0, the schedule over epochs (T = E epochs, t = the
    epoch index, cut = floor(0.1 E)). Below 10 epochs an epoch-unit cut floor(0.1 E) would be 0, i.e. no
    rise at all (p = 1 - e/E); theirs is max(1, floor(0.1 E spe)) steps, inside epoch 0, so the peak is
    never sampled: 3 epochs x 5 steps run at 1 (epoch 0, unscheduled), s(5) = (1 + 31 * 5/9)/32, s(10) =
    1/32, times 2.6^-k with ``double_decay``."""
    opt = _sgd(blocks, hp, _disc(hp))
    stlr = SlantedTriangular(total, hp["cut_frac"], hp["ratio"], ulmfit=hp["per_epoch"])
    if not (hp["double_decay"] or hp["per_epoch"]):
        return opt, stlr
    factor = _disc(hp)
    by_block = {b.index: factor(b, len(blocks)) for b in blocks}
    schedules = [Scaled(stlr, by_block[g["block"]]) if hp["double_decay"] else stlr for g in opt.param_groups]
    if hp["per_epoch"]:
        schedules = [PerEpoch(s, steps_per_epoch) for s in schedules]
    return opt, schedules


def build_sam(blocks, hp, total, factor=None):
    return SAM(_sgd(blocks, hp, factor), hp["rho"], hp["adaptive"]), None


def build_sam_discriminative(blocks, hp, total):
    return build_sam(blocks, hp, total, _disc(hp))


def build_lookahead_adamw(blocks, hp, total):
    base = torch_optim.AdamW(param_groups(blocks, hp["lr"]), lr=hp["lr"], weight_decay=hp["weight_decay"])
    return Lookahead(base, hp["k"], hp["alpha"]), None


# --- the table ---

SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
ADAM = dict(lr=3e-4, betas=(0.9, 0.999), weight_decay=0.0)
SGD_FT = dict(lr=5e-4, weight_decay=0.01)  # fine-tuning: SGD family 5e-4, Adam family 5e-5, wd 0.01
ADAM_FT = dict(lr=5e-5, weight_decay=0.01)
DISC = dict(SGD, lr=0.05, decay_factor=2.6)

# search spaces (dalsopt.spaces): every row also searches lr on Around() = default/10 .. default*10
MOMENTUM = Dim.real(0.8, 0.99)
SGD_SPACE: Declared = dict(momentum=MOMENTUM, weight_decay=Around())
DISC_SPACE: Declared = dict(SGD_SPACE, decay_factor=Dim.real(1.5, 4.0))
RHO = Dim.real(0.01, 1.0, log=True)  # SAM's radius; adaptive (ASAM) radii run larger than 0.05
DALS_SPACE: Declared = dict(momentum=MOMENTUM, weight_decay=Around(), trust_coef=Dim.real(1e-3, 0.3, log=True),
                            alpha0=Dim.real(0.2, 0.9))
WARMUP = Dim.real(0.0, 0.2)
# fine-tuning DALS: the trust ratio (0.2 .. 5) rescales lr, and the tuned dals@finetune runs at lr 0.186;
# the decay in or out of the trust ratio decides whether such a rate moves the encoder or shrinks it
DALS_FT_SPACE: Declared = dict(lr=Around(10.0, 1000.0), decoupled_decay=Dim.choice(False, True))


@dataclass(frozen=True)
class Entry:
    id: str
    name: str
    generation: int
    build: Callable[..., tuple]
    defaults: dict
    finetune: dict = field(default_factory=dict)
    fusable: bool = False  # the builder takes fused=True (one compiled update per tensor)
    epochs: bool = False  # the builder takes steps_per_epoch= (a schedule that can step once per epoch)
    space: Declared = field(default_factory=dict)  # what is worth searching (lr always): dalsopt.spaces
    finetune_space: Declared = field(default_factory=dict)  # what fine-tuning changes in it

    def hyperparameters(self, regime: str) -> dict:
        return {**self.defaults, **(self.finetune if regime == "finetune" else {})}

    def declared_space(self, regime: str) -> Declared:
        return {**self.space, **(self.finetune_space if regime == "finetune" else {})}


REGISTRY: tuple[Entry, ...] = (
    Entry("sgd", "Fixed SGD", 1, build_sgd, SGD, SGD_FT, space=SGD_SPACE),
    Entry("cosine", "Cosine SGD", 2, build_cosine, dict(SGD, lr=0.03, eta_min=1e-5), SGD_FT, space=SGD_SPACE),
    Entry("sgdr", "SGDR (cosine warm restarts)", 2, build_sgdr, dict(SGD, lr=0.05, t0=10, t_mult=1, eta_min=0.0), SGD_FT,
          space=dict(SGD_SPACE, t0=Dim.integer(5, 1000, log=True), t_mult=Dim.choice(1, 2))),
    Entry("adam", "Adam", 3, partial(build_torch, torch_optim.Adam), ADAM, ADAM_FT),
    Entry("adamw", "AdamW", 3, partial(build_torch, torch_optim.AdamW), dict(ADAM, weight_decay=0.01), ADAM_FT,
          space=dict(weight_decay=Around())),
    Entry("adabound", "AdaBound", 3, build_adabound,
          dict(lr=1e-3, beta1=0.9, beta2=0.999, final_lr=0.01, gamma=1e-3, eps=1e-8, weight_decay=0.0),
          dict(ADAM_FT, final_lr=5e-4), space=dict(final_lr=Around())),
    Entry("lars", "LARS", 4, build_lars, dict(SGD, lr=0.03, trust_coef=0.02, eps=1e-8), SGD_FT,
          space=dict(SGD_SPACE, trust_coef=Dim.real(1e-3, 0.1, log=True))),
    Entry("discriminative", "Discriminative LR", 4, build_discriminative, DISC, SGD_FT, space=DISC_SPACE),
    Entry("radam", "RAdam", 5, partial(build_torch, torch_optim.RAdam), ADAM, ADAM_FT),
    Entry("lion", "Lion", 5, build_lion, dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0),
          dict(lr=1e-5, weight_decay=0.1), space=dict(weight_decay=Dim.real(0.0, 1.0))),
    Entry("lookahead-adamw", "Lookahead + AdamW", 5, build_lookahead_adamw,
          dict(lr=3e-4, weight_decay=0.01, k=5, alpha=0.5), ADAM_FT,
          space=dict(weight_decay=Around(), k=Dim.integer(3, 10), alpha=Dim.real(0.3, 0.8))),
    Entry("sam", "SAM", 5, build_sam, dict(SGD, rho=0.05, adaptive=True), SGD_FT, space=dict(SGD_SPACE, rho=RHO)),
    Entry("grokfast", "Grokfast", 5, build_grokfast, dict(SGD, lr=0.03, alpha=0.98, lamb=2.0), SGD_FT,
          space=dict(SGD_SPACE, alpha=Dim.real(0.8, 0.99), lamb=Dim.real(0.1, 5.0, log=True))),
    Entry("stlr-discriminative", "STLR + Discriminative (ULMFiT)", 5, build_stlr,
          dict(DISC, cut_frac=0.1, ratio=32.0, double_decay=False, per_epoch=False), SGD_FT, epochs=True,
          space=dict(DISC_SPACE, cut_frac=Dim.real(0.05, 0.3))),
    Entry("sam-discriminative", "SAM + Discriminative", 6, build_sam_discriminative,
          dict(DISC, rho=0.05, adaptive=True), SGD_FT, space=dict(DISC_SPACE, rho=RHO)),
    Entry("dals", "DALS", 6, build_dals, DALS_DEFAULTS, dict(SGD_FT, warmup_frac=0.1), fusable=True,
          space=dict(DALS_SPACE, warmup_frac=WARMUP), finetune_space=DALS_FT_SPACE),
    Entry("dals-fast", "DALS-Fast", 6, build_dals_fast, dict(DALS_DEFAULTS, lr=0.05, momentum=0.85, warmup_frac=0.02),
          dict(SGD_FT, lr=1e-3, warmup_frac=0.05), fusable=True,
          space=dict(DALS_SPACE, warmup_frac=WARMUP), finetune_space=DALS_FT_SPACE),
    Entry("dals-acc", "DALS-Acc", 6, build_dals_acc,
          {**{k: v for k, v in DALS_DEFAULTS.items() if k != "warmup_frac"},
           "alpha0": 0.7, "weight_decay": 5e-4, "phase_slow": 0.001, "t0": 0, "t_mult": 2},
          SGD_FT, fusable=True, space=DALS_SPACE, finetune_space=DALS_FT_SPACE),
)

_BY_ID = {e.id: e for e in REGISTRY}
GENERATIONS: dict[str, int] = {e.id: e.generation for e in REGISTRY}


def names(presets: bool = False) -> list[str]:
    """The 18 strategy ids in generation order (the paper's table); with ``presets``, the tuned presets
    (``strategy@preset``) after them."""
    from . import presets as _presets

    return [e.id for e in REGISTRY] + (_presets.names() if presets else [])


def entry(name: str) -> Entry:
    base = name.split("@", 1)[0]
    if base not in _BY_ID:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(_BY_ID)}")
    return _BY_ID[base]


# --- validation ---

def _check_value(name: str, key: str, default: Any, value: Any) -> Any:
    where = f"hyperparameter {key!r} of {name!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ValueError(f"{where} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(_check_value(name, key, default[0], v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be finite and >= 0, got {value!r}")
    if isinstance(default, int):
        if value != int(value):
            raise ValueError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def resolve(name: str, regime: str = "scratch", **hp: Any) -> dict:
    """The full hyperparameters ``make`` would use: defaults for the regime, a preset, then ``hp``."""
    spec = entry(name)
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; allowed: {', '.join(REGIMES)}")
    defaults = spec.hyperparameters(regime)
    if "@" in name:
        defaults = {**defaults, **presets.load(name)}
    unknown = sorted(set(hp) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for {spec.id!r}; "
                         f"allowed: {', '.join(sorted(defaults))}")
    merged = {**defaults, **hp}
    return {k: _check_value(spec.id, k, spec.defaults[k], v) for k, v in merged.items()}


def search_space(name: str, regime: str = "scratch") -> dict[str, Dim]:
    """What is worth searching for strategy ``name`` in ``regime``: ``{hyperparameter: Dim}``, ``lr``
    first, on a log scale around the regime's default. A preset (``dals@finetune``) gets its strategy's
    space, the preset being one point in it. Plain data in Optuna's conventions (``Dim.kwargs()``);
    every point inside is accepted by ``resolve``/``make``."""
    spec = entry(name)
    resolve(name, regime)  # an unknown regime or preset is the usual one-line error
    return resolve_space(spec.id, spec.declared_space(regime), spec.hyperparameters(regime))


# --- the strategy object ---

@dataclass
class Strategy:
    """A strategy bound to a model: optimizer, optional per-step scheduler and what the paper says of it."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    generation: int
    meta: dict

    @property
    def needs_closure(self) -> bool:
        """SAM-based strategies evaluate the loss twice per step."""
        return self.optimizer.needs_closure

    def step(self, loss: torch.Tensor | float | None = None, closure: Callable[[], torch.Tensor] | None = None):
        """One optimizer step, then one scheduler step. Every strategy takes the loss (DALS reads it); the
        closure goes only where it is needed (SAM), since torch's classes would run it once more."""
        result = self.optimizer.step(closure if self.needs_closure else None, loss=loss)
        if self.scheduler is not None:
            self.scheduler.step()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def lrs(self) -> list[float]:
        """The current rate of each param group, bottom block first."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Tensors and primitives only (loads with ``torch.load(weights_only=True)``): the schedules are
        pure functions that ``make`` rebuilds from the hyperparameters, so the scheduler's copy of them
        (``LambdaLR`` saves a nested schedule as an object, e.g. double decay's ``Scaled``) is left out."""
        return {
            "strategy": self.name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else _without_lambdas(self.scheduler.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"checkpoint is for strategy {state.get('strategy')!r}, not {self.name!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def _without_lambdas(state: dict) -> dict:
    """``LambdaLR``'s state with ``lr_lambdas`` as ``None`` entries, which its ``load_state_dict`` skips."""
    return {**state, "lr_lambdas": [None] * len(state.get("lr_lambdas", []))}


def make(
    name: str,
    model: nn.Module | Iterable[torch.Tensor],
    *,
    total_steps: int,
    regime: str = "scratch",
    grouping: Grouping = "auto",
    fused: bool = False,
    steps_per_epoch: int | None = None,
    **hp: Any,
) -> Strategy:
    """Build strategy ``name`` for ``model`` over ``total_steps`` optimizer steps.

    ``regime`` picks the defaults ("scratch" or "finetune"), ``grouping`` how blocks are found
    (see ``dalsopt.groups``), and ``hp`` overrides any default hyperparameter of the strategy.
    ``fused=True`` (the DALS family) runs the step as one compiled update per tensor: the same maths and
    ``state_dict``, faster; the first step compiles it (``torch.compile``, cached on disk).
    ``steps_per_epoch``: what schedules that step once per epoch need (``per_epoch=True``, e.g.
    ``stlr-discriminative@authors``); the others ignore it.
    """
    spec = entry(name)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a whole number >= 1, got {total_steps!r}")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                        or not 1 <= steps_per_epoch <= total_steps):
        raise ValueError(f"steps_per_epoch must be a whole number in [1, total_steps={total_steps}] or None, "
                         f"got {steps_per_epoch!r}")
    if fused and not spec.fusable:
        fusable = ", ".join(e.id for e in REGISTRY if e.fusable)
        raise ValueError(f"fused=True is available for {fusable}, not {spec.id!r}")
    full = resolve(name, regime, **hp)
    if full.get("per_epoch") and steps_per_epoch is None:
        raise ValueError(f"{name!r} steps its schedule once per epoch (per_epoch=True): "
                         "pass steps_per_epoch= to dalsopt.make")
    blocks = make_blocks(model, grouping)
    options = {"fused": True} if fused else {}
    if spec.epochs:
        options["steps_per_epoch"] = steps_per_epoch
    optimizer, schedule = spec.build(blocks, full, total_steps, **options)
    scheduler = None if schedule is None else LambdaLR(optimizer, schedule)
    meta = {"id": spec.id, "name": spec.name, "generation": spec.generation, "regime": regime,
            "preset": name if "@" in name else None, "hyperparameters": full, "blocks": len(blocks),
            "fused": fused, "steps_per_epoch": steps_per_epoch}
    return Strategy(name, optimizer, scheduler, spec.generation, meta)

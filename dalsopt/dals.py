"""DALS, DALS-Fast and DALS-Acc: compositions of the shared pieces.

DALS = loss-phase detector -> depth-aware filter -> coupled decay -> heavy-ball momentum scaled by the
trust ratio measured on the filtered gradient going into it,
with a warmup-cosine (DALS, DALS-Fast) or warm-restart (DALS-Acc) schedule. The three variants differ
only in their filter coefficients per phase, thresholds and schedule: no variant flags inside the step.
"""
from __future__ import annotations

from .chain import Chain
from .filters import DepthFilter
from .fused import FusedDALS
from .groups import Block
from .param_groups import param_groups
from .phase import PhaseDetector
from .schedules import WarmRestarts, WarmupCosine
from .transforms import CoupledDecay, DecoupledDecay, Momentum
from .trust import TrustScaled

__all__ = ["dals_optimizer", "build_dals", "build_dals_fast", "build_dals_acc", "DALS_DEFAULTS"]

DALS_DEFAULTS = dict(
    lr=0.03,
    momentum=0.9,
    weight_decay=1e-4,
    trust_coef=0.02,
    trust_min=0.2,
    trust_max=5.0,
    alpha0=0.6,
    warmup_frac=0.05,
    phase_fast=0.01,
    phase_slow=0.002,
    exclude_norm_bias=False,
    decoupled_decay=False,
)


def _calm(alpha0: float) -> tuple[float, float]:
    """Phase-1 and phase-2 filter coefficients: alpha0, then more smoothing on a plateau."""
    return alpha0, min(0.9, alpha0 + 0.1)


def dals_optimizer(blocks: list[Block], hp: dict, alphas: tuple, fused: bool = False) -> Chain:
    """The DALS step over depth-aware groups; ``alphas`` are the filter coefficients of phases 0-2.
    ``fused``: the same pieces run as one compiled update per tensor (``dalsopt.fused``).

    ``decoupled_decay`` (ours, off by default): the decay leaves the trust ratio, ``p <- p (1 - lr wd)``
    before the step (AdamW's), and r is measured on the filtered gradient alone. In a pretrained encoder
    ||g|| is ~1/13 of wd ||p|| (``scripts/trust_ratios.py``, MiniLM on TREC-6), so with the coupled decay
    r = trust_coef / wd and ~93% of the trust-scaled step is decay: a rate that moves the encoder also
    shrinks it (``lr trust_coef`` of its norm per step, times 1/(1 - momentum))."""
    groups = param_groups(blocks, hp["lr"], split_no_decay=hp["exclude_norm_bias"])
    trust = TrustScaled(Momentum(), hp["trust_coef"], hp["trust_min"], hp["trust_max"])
    detector = PhaseDetector(fast=hp["phase_fast"], slow=hp["phase_slow"])
    if hp["decoupled_decay"]:
        if fused:
            raise ValueError("fused=True fuses DALS's coupled decay; with decoupled_decay=True use fused=False")
        transforms = [detector, DecoupledDecay(), DepthFilter(alphas), trust]
    else:
        pieces = (DepthFilter(alphas), CoupledDecay(), trust)
        transforms = [detector, FusedDALS(*pieces)] if fused else [detector, *pieces]
    return Chain(groups, transforms, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def build_dals(blocks: list[Block], hp: dict, total: int, fused: bool = False):
    a0 = hp["alpha0"]
    alphas = (max(0.3, a0 - 0.3), *_calm(a0))
    return dals_optimizer(blocks, hp, alphas, fused), WarmupCosine(total, hp["warmup_frac"] * total)


def build_dals_fast(blocks: list[Block], hp: dict, total: int, fused: bool = False):
    """In fast descent the raw gradient goes straight through (None) and the filter is left alone."""
    alphas = (None, *_calm(hp["alpha0"]))
    return dals_optimizer(blocks, hp, alphas, fused), WarmupCosine(total, hp["warmup_frac"] * total)


def build_dals_acc(blocks: list[Block], hp: dict, total: int, fused: bool = False):
    """Warm restarts instead of warmup; ``t0`` steps for the first cycle (0: an eighth of the run, the
    authors' 10 of 80 epochs), cycles doubling."""
    a0 = hp["alpha0"]
    t0 = hp["t0"] or max(1, total // 8)
    schedule = WarmRestarts(t0, hp["t_mult"])
    return dals_optimizer(blocks, hp, (max(0.4, a0 - 0.15), *_calm(a0)), fused), schedule

"""Independent float64 reference implementations of the strategies in STRATEGIES.md.

Written from the formulas of the spec (and the papers it names), one small function per rule, as plain
loops over lists of float64 tensors. This module must never import ``dalsopt``: it is what the package
is checked against.

Conventions shared by the step rules below:
  * ``params``: the initial tensors (cloned here, never modified);
  * ``grads[t][i]``: the gradient of tensor ``i`` at step ``t`` (``None``: no gradient at that step);
  * ``lrs[t][i]``: the learning rate tensor ``i`` gets at step ``t``;
  * the return value is the history ``hist[t][i]``: tensor ``i`` after step ``t``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

Hist = list[list[Tensor]]


def _clone(ts: Sequence[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in ts]


def _norm(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


# --------------------------------------------------------------------------------------------------
# Schedules (multipliers of the base rate at optimizer step t, t counted from 0)
# --------------------------------------------------------------------------------------------------

def cosine(t: int, total: int, floor: float = 0.0) -> float:
    """eta_min + (eta - eta_min)(1 + cos(pi t / T))/2, as a multiplier of eta (floor = eta_min/eta)."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / total))


def warmup_cosine(t: int, total: int, warmup: float) -> float:
    """DALS: s = t/W for t < W, else (1 + cos(pi min(1, (t - W)/(T - W))))/2 (W a float)."""
    if t < warmup:
        return t / warmup
    progress = min(1.0, (t - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warm_restarts(t: int, t0: int, t_mult: int = 1, floor: float = 0.0) -> float:
    """SGDR: cosine from 1 to floor within each cycle; cycle lengths t0, t0 t_mult, t0 t_mult^2, ..."""
    start, length = 0, t0
    while t >= start + length:
        start += length
        length *= t_mult
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (t - start) / length))


def slanted_triangular(t: int, total: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """STLR (AllenNLP's form): cut = floor(cut_frac T); p = t/cut before cut, else 1 - (t-cut)/(T-cut);
    s = (1 + (ratio - 1) p)/ratio."""
    cut = math.floor(cut_frac * total)
    p = t / cut if t < cut else 1.0 - (t - cut) / (total - cut)
    return (1.0 + (ratio - 1.0) * p) / ratio


def authors_stlr(epoch: int, steps_per_epoch: int, epochs: int, cut_frac: float = 0.1,
                 ratio: float = 32.0) -> float | None:
    """The authors' STLR multiplier during epoch ``epoch`` (from 0) as their loop drives it
    (CodeOfMe/LearningRate: ``STLRScheduler(opt, T=total_steps)``, called ``steps_per_epoch`` times after
    each epoch). None during epoch 0: not called yet, the groups keep their own rates. Epoch e >= 1 after
    t = e spe calls, T = epochs spe: cut = max(1, floor(cut_frac T)); p = t/cut if t < cut, else
    1 - (t - cut)/(cut (1/cut_frac - 1)) (ULMFiT's eq. 3); p clipped to [0, 1]; s = (1 + (ratio-1) p)/ratio."""
    if epoch == 0:
        return None
    t, total = epoch * steps_per_epoch, epochs * steps_per_epoch
    cut = max(1, int(total * cut_frac))
    p = t / cut if t < cut else 1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    p = min(1.0, max(0.0, p))
    return (1.0 + p * (ratio - 1.0)) / ratio


def discriminative_factor(block: int, count: int, decay: float = 2.6) -> float:
    """eta_l = eta / decay^(L-1-l)."""
    return 1.0 / decay ** (count - 1 - block)


# --------------------------------------------------------------------------------------------------
# SGD family
# --------------------------------------------------------------------------------------------------

def sgd(params, grads, lrs, *, momentum: float, wd: float) -> Hist:
    """torch-SGD semantics: d = g + wd p; m = d (first step), m = mu m + d; p -= lr m."""
    p, m, hist = _clone(params), [None] * len(params), []
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if g is None:
                continue
            d = g + wd * p[i]
            if momentum:
                m[i] = d.clone() if m[i] is None else momentum * m[i] + d
                d = m[i]
            p[i] = p[i] - lrs[t][i] * d
        hist.append(_clone(p))
    return hist


def grokfast_sgd(params, grads, lrs, *, alpha: float, lamb: float, momentum: float, wd: float) -> Hist:
    """Grokfast EMA (mu_0 = g_0, mu_t = a mu + (1-a) g_t, u = g + lambda mu), then SGD with coupled
    decay and momentum."""
    mu: list[Optional[Tensor]] = [None] * len(params)
    filtered = []
    for gs in grads:
        row = []
        for i, g in enumerate(gs):
            if g is None:
                row.append(None)
                continue
            mu[i] = g.clone() if mu[i] is None else alpha * mu[i] + (1.0 - alpha) * g
            row.append(g + lamb * mu[i])
        filtered.append(row)
    return sgd(params, filtered, lrs, momentum=momentum, wd=wd)


def lars(params, grads, lrs, *, momentum: float, wd: float, trust_coef: float, eps: float) -> Hist:
    """LARS as timm's ``Lars``: local = tc ||p|| / (||g|| + wd ||p|| + eps) (1 if either norm is 0);
    u = local (g + wd p); m = mu m + u; p -= lr m."""
    p, m, hist = _clone(params), [None] * len(params), []
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            pn, gn = _norm(p[i]), _norm(g)
            local = trust_coef * pn / (gn + wd * pn + eps) if pn > 0 and gn > 0 else 1.0
            u = local * (g + wd * p[i])
            m[i] = u.clone() if m[i] is None else momentum * m[i] + u
            p[i] = p[i] - lrs[t][i] * m[i]
        hist.append(_clone(p))
    return hist


# --------------------------------------------------------------------------------------------------
# Adaptive family
# --------------------------------------------------------------------------------------------------

def lion(params, grads, lrs, *, beta1: float, beta2: float, wd: float) -> Hist:
    """Lion (Chen et al. 2023): c = b1 m + (1-b1) g; p <- p - lr (sign(c) + wd p); m = b2 m + (1-b2) g."""
    p, m, hist = _clone(params), [torch.zeros_like(x) for x in params], []
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            c = beta1 * m[i] + (1.0 - beta1) * g
            p[i] = p[i] - lrs[t][i] * (torch.sign(c) + wd * p[i])
            m[i] = beta2 * m[i] + (1.0 - beta2) * g
        hist.append(_clone(p))
    return hist


def adabound(params, grads, lrs, *, base_lr: float, beta1: float, beta2: float, final_lr: float,
             gamma: float, eps: float, wd: float) -> Hist:
    """AdaBound (Luo et al. 2019, the reference code): coupled decay g += wd p; Adam moments; the step
    size lr sqrt(1-b2^k)/(1-b1^k)/(sqrt(v)+eps) clipped into [fl (1 - 1/(gamma k + 1)), fl (1 + 1/(gamma k))]
    with fl = final_lr lr / base_lr; p -= clipped * m. k counts this tensor's steps from 1."""
    p = _clone(params)
    m = [torch.zeros_like(x) for x in params]
    v = [torch.zeros_like(x) for x in params]
    k = [0] * len(params)
    hist = []
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if g is None:
                continue
            k[i] += 1
            g = g + wd * p[i]
            m[i] = beta1 * m[i] + (1.0 - beta1) * g
            v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
            lr = lrs[t][i]
            step_size = lr * math.sqrt(1.0 - beta2 ** k[i]) / (1.0 - beta1 ** k[i])
            fl = final_lr * lr / base_lr
            lower = fl * (1.0 - 1.0 / (gamma * k[i] + 1.0))
            upper = fl * (1.0 + 1.0 / (gamma * k[i]))
            step = torch.clamp(step_size / (v[i].sqrt() + eps), lower, upper)
            p[i] = p[i] - step * m[i]
        hist.append(_clone(p))
    return hist


def lookahead_rule(slow: list[Tensor], fast: list[Tensor], alpha: float) -> list[Tensor]:
    """Lookahead sync (Zhang et al. 2019): slow <- slow + alpha (fast - slow); fast <- slow."""
    return [s + alpha * (f - s) for s, f in zip(slow, fast)]


# --------------------------------------------------------------------------------------------------
# SAM
# --------------------------------------------------------------------------------------------------

def sam_sgd(params, loss_fns: Sequence[Callable[[list[Tensor]], Tensor]], lrs, *, rho: float,
            adaptive: bool, momentum: float, wd: float) -> Hist:
    """SAM / ASAM (Foret et al. 2021; Kwon et al. 2021) over SGD. Per step: g1 = grad L(w);
    n = ||(T g1)|| over all tensors (T = |w| if adaptive else 1); e = rho T^2 g1 / (n + 1e-12);
    g2 = grad L(w + e); then SGD (coupled decay, momentum) at w with g2."""
    p, m, hist = _clone(params), [None] * len(params), []
    for t, loss_fn in enumerate(loss_fns):
        w = [x.clone().requires_grad_(True) for x in p]
        g1 = torch.autograd.grad(loss_fn(w), w)
        scaled = [(x.abs() * g if adaptive else g) for x, g in zip(p, g1)]
        n = math.sqrt(sum(_norm(s) ** 2 for s in scaled))
        e = [rho * (x * x if adaptive else 1.0) * g / (n + 1e-12) for x, g in zip(p, g1)]
        w2 = [(x + ei).requires_grad_(True) for x, ei in zip(p, e)]
        g2 = torch.autograd.grad(loss_fn(w2), w2)
        for i, g in enumerate(g2):
            d = g + wd * p[i]
            m[i] = d.clone() if m[i] is None else momentum * m[i] + d
            p[i] = p[i] - lrs[t][i] * m[i]
        hist.append(_clone(p))
    return hist


# --------------------------------------------------------------------------------------------------
# DALS
# --------------------------------------------------------------------------------------------------

def loss_ema(losses: Sequence[float], *, decay: float = 0.95) -> list[tuple[float, float]]:
    """(E, delta) after each loss: E <- 0.95 E + 0.05 L (E_0 = L_0); delta = (E_old - E_new)/max(|E_old|, 1e-8)
    (0 on the first loss)."""
    out, ema = [], None
    for loss in losses:
        if ema is None:
            ema, delta = loss, 0.0
        else:
            new = decay * ema + (1.0 - decay) * loss
            delta = (ema - new) / max(abs(ema), 1e-8)
            ema = new
        out.append((ema, delta))
    return out


def loss_phases(losses: Sequence[float], *, fast: float = 0.01, slow: float = 0.002,
                decay: float = 0.95) -> list[int]:
    """Phase 0 if delta > fast, 1 if slow < delta <= fast, else 2 (also on the first step)."""
    return [0 if delta > fast else 1 if delta > slow else 2 for _, delta in loss_ema(losses, decay=decay)]


def dals_alphas(alpha0: float) -> tuple:
    """DALS: max(0.3, a0 - 0.3) in phase 0, a0 in phase 1, min(0.9, a0 + 0.1) in phase 2."""
    return (max(0.3, alpha0 - 0.3), alpha0, min(0.9, alpha0 + 0.1))


def dals_fast_alphas(alpha0: float) -> tuple:
    """DALS-Fast: phase 0 passes the raw gradient and leaves the filter alone (None)."""
    return (None, alpha0, min(0.9, alpha0 + 0.1))


def dals_acc_alphas(alpha0: float) -> tuple:
    """DALS-Acc: phase-0 alpha max(0.4, a0 - 0.15)."""
    return (max(0.4, alpha0 - 0.15), alpha0, min(0.9, alpha0 + 0.1))


def depth_blend(depth: float) -> float:
    return 0.3 + 0.4 * depth


def dals(params, grads, phases: Sequence[int], depths: Sequence[float], lrs: Sequence[float], *,
         alphas: tuple, momentum: float, wd: float, gamma: float, trust_min: float = 0.2,
         trust_max: float = 5.0, decoupled: bool = False) -> tuple[Hist, list[list[float]]]:
    """DALS steps 3-7 of the spec, per tensor:
    f <- a f + (1-a) g (f_0 = 0; a = alphas[phase], None: g_hat = g and f unchanged);
    g_hat = b g + (1-b) f, b = 0.3 + 0.4 d; g_hat += wd p;
    r = clamp(gamma ||p|| / ||g_hat||, lo, hi), 1 if either norm is 0;
    m <- mu m + g_hat; p <- p - eta_t r m.
    ``decoupled`` (dalsopt's decoupled_decay, not the spec's): first p <- p (1 - eta_t wd), and g_hat
    gets no wd p, so r is measured on the filtered gradient (and the decayed p).
    Returns the history and the trust ratios r[t][i]."""
    p = _clone(params)
    f = [torch.zeros_like(x) for x in params]
    m = [torch.zeros_like(x) for x in params]
    hist, ratios = [], []
    for t, gs in enumerate(grads):
        a = alphas[phases[t]]
        row = []
        for i, g in enumerate(gs):
            if decoupled:
                p[i] = p[i] * (1.0 - lrs[t] * wd)
            if a is None:
                gh = g.clone()
            else:
                f[i] = a * f[i] + (1.0 - a) * g
                b = depth_blend(depths[i])
                gh = b * g + (1.0 - b) * f[i]
            if not decoupled:
                gh = gh + wd * p[i]
            pn, gn = _norm(p[i]), _norm(gh)
            r = 1.0 if pn == 0 or gn == 0 else min(max(gamma * pn / gn, trust_min), trust_max)
            row.append(r)
            m[i] = momentum * m[i] + gh
            p[i] = p[i] - lrs[t] * r * m[i]
        hist.append(_clone(p))
        ratios.append(row)
    return hist, ratios

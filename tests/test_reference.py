"""dalsopt against the independent float64 references of ``tests/reference.py`` (written from
STRATEGIES.md, never importing dalsopt).

Every test builds a tiny float64 MLP, hands the strategy gradients chosen per step (some tensors all
zero, one parameter all zero), steps it through the public API (``dalsopt.make`` -> ``Strategy.step``)
and compares every parameter after every step with the reference, to ~1e-12 relative.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dalsopt
from dalsopt import schedules

import reference as ref

F64 = torch.float64
RTOL, ATOL = 1e-12, 1e-14

# The 4-block MLP: tensors w0 b0 | w1 b1 | w2 b2 | w3 b3, one block per Linear.
BLOCK_OF = [0, 0, 1, 1, 2, 2, 3, 3]
DEPTH_OF = [b / 3 for b in BLOCK_OF]
ZERO_PARAM = 3  # b1 starts all zero
ZERO_GRADS = [(0, 3), (1, 3), (3, 4), (9, 0)]  # (step, tensor) pairs whose gradient is all zero


def mlp4(seed: int = 0, zero_bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4), nn.ReLU(),
                          nn.Linear(4, 3)).double()
    if zero_bias:
        with torch.no_grad():
            model[2].bias.zero_()
    return model


def make_grads(model: nn.Module, steps: int, seed: int = 1, zeros=ZERO_GRADS) -> list[list[torch.Tensor]]:
    """Random float64 gradients whose scale varies over three decades per tensor and step (so that
    trust ratios land below, inside and above their clamp), with the listed ones all zero."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [p.shape for p in model.parameters()]
    out = []
    for _ in range(steps):
        row = []
        for shape in shapes:
            scale = 10.0 ** (-3.0 * torch.rand((), generator=gen, dtype=F64).item())
            row.append(torch.randn(shape, generator=gen, dtype=F64) * scale)
        out.append(row)
    for t, i in zeros:
        if t < steps:
            out[t][i] = torch.zeros_like(out[t][i])
    return out


def initial(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def run(s: dalsopt.Strategy, model: nn.Module, grads, losses=None):
    """Step ``s`` with the given gradients; returns (params after each step, s.lrs before each step)."""
    params = list(model.parameters())
    hist, lrs = [], []
    for t, row in enumerate(grads):
        lrs.append(list(s.lrs))
        s.zero_grad()
        for p, g in zip(params, row):
            p.grad = None if g is None else g.clone()
        s.step(loss=None if losses is None else losses[t])
        hist.append([p.detach().clone() for p in params])
    return hist, lrs


def per_tensor(group_lrs_by_step, block_of=BLOCK_OF):
    return [[row[b] for b in block_of] for row in group_lrs_by_step]


def assert_hist(got, want, rtol=RTOL, atol=ATOL):
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"step {t}, tensor {i}: {m}")


def assert_lrs(got, want, rtol=RTOL, atol=1e-16):
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, rel=rtol, abs=atol), f"step {t}: {a} != {b}"


# ----------------------------------------------------------------------------------------------------
# Every default of the 18 strategies, written here from ../shared/STRATEGIES.md (never read from dalsopt):
# (scratch column, what fine-tuning changes). "code:" marks a value STRATEGIES.md leaves open, pinned as
# the implementation chose it.
# ----------------------------------------------------------------------------------------------------

SGD_FT = {"lr": 5e-4, "weight_decay": 0.01}  # fine-tuning: SGD family 5e-4, wd 0.01
ADAM_FT = {"lr": 5e-5, "weight_decay": 0.01}  # fine-tuning: Adam family 5e-5, wd 0.01
DEFAULTS = {
    "sgd": ({"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}, SGD_FT),
    "cosine": ({"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "eta_min": 1e-5}, SGD_FT),
    # T0 = 10 steps as the authors' code; code: t_mult 1, eta_min 0
    "sgdr": ({"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "t0": 10, "t_mult": 1, "eta_min": 0.0}, SGD_FT),
    "adam": ({"lr": 3e-4, "betas": (0.9, 0.999), "weight_decay": 0.0}, ADAM_FT),  # code: torch's betas, wd 0
    "adamw": ({"lr": 3e-4, "betas": (0.9, 0.999), "weight_decay": 0.01}, ADAM_FT),  # code: torch's wd 0.01
    # final_lr 0.01; code: AdaBound's own lr 1e-3, betas, gamma, eps; fine-tuning final_lr 10x the lr
    "adabound": ({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "final_lr": 0.01, "gamma": 1e-3, "eps": 1e-8,
                  "weight_decay": 0.0}, {**ADAM_FT, "final_lr": 5e-4}),
    "lars": ({"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "trust_coef": 0.02, "eps": 1e-8}, SGD_FT),
    "discriminative": ({"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "decay_factor": 2.6}, SGD_FT),
    "radam": ({"lr": 3e-4, "betas": (0.9, 0.999), "weight_decay": 0.0}, ADAM_FT),
    # eta 1e-4; code: betas (0.9, 0.99) of Chen et al.; fine-tuning lr 1e-5, wd 0.1 (Lion: smaller lr, larger wd)
    "lion": ({"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}, {"lr": 1e-5, "weight_decay": 0.1}),
    "lookahead-adamw": ({"lr": 3e-4, "weight_decay": 0.01, "k": 5, "alpha": 0.5}, ADAM_FT),
    "sam": ({"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "rho": 0.05, "adaptive": True}, SGD_FT),
    "grokfast": ({"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "alpha": 0.98, "lamb": 2.0}, SGD_FT),
    # code: per_epoch False (True: the authors' once-per-epoch stepping, the preset stlr-discriminative@authors)
    "stlr-discriminative": ({"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "decay_factor": 2.6, "cut_frac": 0.1,
                             "ratio": 32.0, "double_decay": False, "per_epoch": False}, SGD_FT),
    "sam-discriminative": ({"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "decay_factor": 2.6, "rho": 0.05,
                            "adaptive": True}, SGD_FT),
    # ours, off by default (not the authors'): exclude_norm_bias, decoupled_decay
    "dals": ({"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "trust_coef": 0.02, "trust_min": 0.2, "trust_max": 5.0,
              "alpha0": 0.6, "warmup_frac": 0.05, "phase_fast": 0.01, "phase_slow": 0.002, "exclude_norm_bias": False,
              "decoupled_decay": False}, {**SGD_FT, "warmup_frac": 0.1}),
    "dals-fast": ({"lr": 0.05, "momentum": 0.85, "weight_decay": 1e-4, "trust_coef": 0.02, "trust_min": 0.2,
                   "trust_max": 5.0, "alpha0": 0.6, "warmup_frac": 0.02, "phase_fast": 0.01, "phase_slow": 0.002,
                   "exclude_norm_bias": False, "decoupled_decay": False},
                  {**SGD_FT, "lr": 1e-3, "warmup_frac": 0.05}),  # 2x the SGD rate
    # no warmup; code: t0 0 = an eighth of the run (STRATEGIES.md: 10 epochs, or max(3 epochs, 50 steps) for text)
    "dals-acc": ({"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "trust_coef": 0.02, "trust_min": 0.2,
                  "trust_max": 5.0, "alpha0": 0.7, "phase_fast": 0.01, "phase_slow": 0.001, "exclude_norm_bias": False,
                  "decoupled_decay": False, "t0": 0, "t_mult": 2}, SGD_FT),
}


def spec(name: str, regime: str = "scratch", **hp) -> dict:
    """The hyperparameters STRATEGIES.md gives ``name`` in ``regime``, with ``hp`` on top."""
    scratch, finetune = DEFAULTS[name]
    return {**scratch, **(finetune if regime == "finetune" else {}), **hp}


@pytest.mark.parametrize("regime", ["scratch", "finetune"])
@pytest.mark.parametrize("name", dalsopt.names())
def test_every_default_is_the_spec(name, regime):
    want = spec(name, regime)
    assert dalsopt.resolve(name, regime) == want
    s = dalsopt.make(name, mlp4(), total_steps=10, regime=regime)
    assert s.meta["hyperparameters"] == want
    groups = s.optimizer.param_groups
    if "momentum" in want and name != "lookahead-adamw":
        assert {g["momentum"] for g in groups} == {want["momentum"]}
    assert {g["weight_decay"] for g in groups} == {want["weight_decay"]}


def test_the_table_covers_the_18_strategies():
    assert list(DEFAULTS) == dalsopt.names()


# ----------------------------------------------------------------------------------------------------
# Block grouping and depths
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("widths", [(5, 7, 3), (5, 7, 6, 4, 3), (3, 4, 4, 4, 4, 2)])
def test_sequential_mlp_has_one_block_per_linear_with_depth_l_over_L_minus_1(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double()
    L = len(widths) - 1
    blocks = dalsopt.blocks(model)
    assert len(blocks) == L
    assert [b.index for b in blocks] == list(range(L))
    assert [b.depth for b in blocks] == pytest.approx([l / (L - 1) for l in range(L)], abs=1e-15)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for b, lin in zip(blocks, linears):
        assert [id(p) for p in b.params] == [id(lin.weight), id(lin.bias)]
    s = dalsopt.make("dals", model, total_steps=10)
    assert [g["depth"] for g in s.optimizer.param_groups] == pytest.approx([l / (L - 1) for l in range(L)])
    assert s.meta["blocks"] == L


# ----------------------------------------------------------------------------------------------------
# Schedules against their closed forms
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total, floor", [(40, 0.0), (25, 1e-5 / 0.03), (7, 0.3)])
def test_cosine_schedule_closed_form(total, floor):
    sched = schedules.Cosine(total, floor)
    for t in range(total + 1):
        assert sched(t) == pytest.approx(ref.cosine(t, total, floor), rel=RTOL, abs=1e-16)
    assert sched(0) == pytest.approx(1.0) and sched(total) == pytest.approx(floor, abs=1e-15)


@pytest.mark.parametrize("total, warmup", [(40, 2.8), (40, 2.0), (50, 0.8), (30, 0.0), (20, 5.0)])
def test_warmup_cosine_schedule_closed_form(total, warmup):
    sched = schedules.WarmupCosine(total, warmup)
    for t in range(total):
        assert sched(t) == pytest.approx(ref.warmup_cosine(t, total, warmup), rel=RTOL, abs=1e-16), t
    assert sched(0) == (0.0 if warmup > 0 else 1.0)


@pytest.mark.parametrize("t0, t_mult, floor", [(10, 1, 0.0), (4, 2, 0.0), (3, 2, 0.1), (2, 3, 0.0), (5, 1, 0.2)])
def test_warm_restarts_schedule_closed_form(t0, t_mult, floor):
    sched = schedules.WarmRestarts(t0, t_mult, floor)
    values = [sched(t) for t in range(60)]
    for t, v in enumerate(values):
        assert v == pytest.approx(ref.warm_restarts(t, t0, t_mult, floor), rel=RTOL, abs=1e-16), t
    # a restart (back to 1) at every cycle start
    start, length = 0, t0
    while start < 60:
        assert values[start] == pytest.approx(1.0)
        start, length = start + length, length * t_mult


@pytest.mark.parametrize("total, cut_frac, ratio", [(50, 0.1, 32.0), (37, 0.1, 32.0), (100, 0.2, 10.0)])
def test_slanted_triangular_schedule_closed_form(total, cut_frac, ratio):
    sched = schedules.SlantedTriangular(total, cut_frac, ratio)
    cut = math.floor(cut_frac * total)
    for t in range(total):
        assert sched(t) == pytest.approx(ref.slanted_triangular(t, total, cut_frac, ratio), rel=RTOL), t
    assert sched(0) == pytest.approx(1 / ratio) and sched(cut) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------
# Gen 1-2: SGD, cosine, SGDR (against torch's own schedulers on a twin SGD)
# ----------------------------------------------------------------------------------------------------

def test_sgd_matches_reference():
    T = 15
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("sgd", model, total_steps=T)
    want = ref.sgd(initial(model), grads, [[0.01] * 8] * T, momentum=0.9, wd=5e-4)
    got, lrs = run(s, model, grads)
    assert_hist(got, want)
    assert_lrs(lrs, [[0.01] * 4] * T)


def _twin_sgd(model, lr, momentum, wd):
    twin = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    return twin, torch.optim.SGD(twin, lr=lr, momentum=momentum, weight_decay=wd)


@pytest.mark.parametrize(
    "name, hp, make_sched",
    [
        ("cosine", {}, lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=1e-5)),
        ("cosine", {"eta_min": 1e-3, "lr": 0.1},
         lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=1e-3)),
        ("sgdr", {}, lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=1)),
        ("sgdr", {"t0": 3, "t_mult": 2, "eta_min": 1e-4},
         lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=1e-4)),
    ],
)
def test_scheduled_sgd_matches_torch_schedulers(name, hp, make_sched):
    T = 40
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make(name, model, total_steps=T, **hp)
    full = spec(name, **hp)
    twin, opt = _twin_sgd(model, full["lr"], 0.9, 5e-4)
    sched = make_sched(opt, T)
    want, twin_lrs = [], []
    for row in grads:
        twin_lrs.append([opt.param_groups[0]["lr"]] * 4)
        for p, g in zip(twin, row):
            p.grad = g.clone()
        opt.step()
        sched.step()
        want.append([p.detach().clone() for p in twin])
    got, lrs = run(s, model, grads)
    assert_lrs(lrs, twin_lrs, rtol=1e-12, atol=1e-15)
    assert_hist(got, want, rtol=1e-11, atol=1e-13)
    # and against the closed forms
    if name == "cosine":
        closed = [[full["lr"] * ref.cosine(t, T, full["eta_min"] / full["lr"])] * 4 for t in range(T)]
    else:
        closed = [[full["lr"] * ref.warm_restarts(t, full["t0"], full["t_mult"], full["eta_min"] / full["lr"])] * 4
                  for t in range(T)]
    assert_lrs(lrs, closed)


# ----------------------------------------------------------------------------------------------------
# Gen 3: Adam family (torch's classes), AdaBound
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls, kwargs", [
    ("adam", torch.optim.Adam, dict(lr=3e-4, weight_decay=0.0)),
    ("adamw", torch.optim.AdamW, dict(lr=3e-4, weight_decay=0.01)),
    ("radam", torch.optim.RAdam, dict(lr=3e-4, weight_decay=0.0)),
])
def test_adam_family_are_torchs_classes_with_the_papers_settings(name, cls, kwargs):
    T = 12
    model = mlp4()
    grads = make_grads(model, T)
    twin = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    opt = cls(twin, **kwargs)
    want = []
    for row in grads:
        for p, g in zip(twin, row):
            p.grad = g.clone()
        opt.step()
        want.append([p.detach().clone() for p in twin])
    got, _ = run(dalsopt.make(name, model, total_steps=T), model, grads)
    assert_hist(got, want)


@pytest.mark.parametrize("hp", [{}, {"weight_decay": 1e-2, "gamma": 0.5}, {"gamma": 0.5, "final_lr": 0.003}])
def test_adabound_matches_reference(hp):
    T = 30
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("adabound", model, total_steps=T, **hp)
    h = spec("adabound", **hp)
    want = ref.adabound(initial(model), grads, [[h["lr"]] * 8] * T, base_lr=h["lr"], beta1=h["beta1"],
                        beta2=h["beta2"], final_lr=h["final_lr"], gamma=h["gamma"], eps=h["eps"],
                        wd=h["weight_decay"])
    got, _ = run(s, model, grads)
    assert_hist(got, want)


def test_adabound_step_count_is_per_tensor_when_a_gradient_arrives_late():
    T = 6
    model = mlp4()
    grads = make_grads(model, T)
    grads[0][0] = None  # w0 gets its first gradient on step 1
    s = dalsopt.make("adabound", model, total_steps=T)
    want = ref.adabound(initial(model), grads, [[1e-3] * 8] * T, base_lr=1e-3, beta1=0.9, beta2=0.999,
                        final_lr=0.01, gamma=1e-3, eps=1e-8, wd=0.0)
    got, _ = run(s, model, grads)
    assert_hist(got, want)


# ----------------------------------------------------------------------------------------------------
# Gen 4: LARS, discriminative rates
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.05}, {"trust_coef": 0.001, "momentum": 0.5}])
def test_lars_matches_reference(hp):
    T = 20
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("lars", model, total_steps=T, **hp)
    h = spec("lars", **hp)
    want = ref.lars(initial(model), grads, [[h["lr"]] * 8] * T, momentum=h["momentum"], wd=h["weight_decay"],
                    trust_coef=h["trust_coef"], eps=h["eps"])
    got, _ = run(s, model, grads)
    assert_hist(got, want)


def test_lars_trust_has_weight_decay_in_the_denominator():
    """One step, one tensor, by hand: local = tc ||p|| / (||g|| + wd ||p|| + eps)."""
    p = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)  # ||p|| = 5
    s = dalsopt.make("lars", [p], total_steps=1, lr=1.0, weight_decay=0.1, trust_coef=0.5, momentum=0.9)
    p.grad = torch.tensor([0.0, 2.0], dtype=F64)  # ||g|| = 2
    s.step()
    local = 0.5 * 5.0 / (2.0 + 0.1 * 5.0 + 1e-8)
    expected = torch.tensor([3.0, 4.0], dtype=F64) - local * (torch.tensor([0.3, 2.4], dtype=F64))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-15)


def test_discriminative_per_group_rates_and_steps():
    T = 12
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("discriminative", model, total_steps=T)
    group = [0.05 * ref.discriminative_factor(l, 4, 2.6) for l in range(4)]
    assert group == pytest.approx([0.05 / 2.6**3, 0.05 / 2.6**2, 0.05 / 2.6, 0.05])
    want = ref.sgd(initial(model), grads, per_tensor([group] * T), momentum=0.9, wd=5e-4)
    got, lrs = run(s, model, grads)
    assert_lrs(lrs, [group] * T)
    assert_hist(got, want)


# ----------------------------------------------------------------------------------------------------
# Gen 5: Lion, Grokfast, STLR, SAM, Lookahead
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.1, "lr": 1e-3}])
def test_lion_matches_reference(hp):
    T = 20
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("lion", model, total_steps=T, **hp)
    h = spec("lion", **hp)
    want = ref.lion(initial(model), grads, [[h["lr"]] * 8] * T, beta1=h["beta1"], beta2=h["beta2"],
                    wd=h["weight_decay"])
    got, _ = run(s, model, grads)
    assert_hist(got, want)


@pytest.mark.parametrize("hp", [{}, {"alpha": 0.8, "lamb": 5.0, "weight_decay": 0.01}])
def test_grokfast_matches_reference(hp):
    T = 20
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("grokfast", model, total_steps=T, **hp)
    h = spec("grokfast", **hp)
    want = ref.grokfast_sgd(initial(model), grads, [[h["lr"]] * 8] * T, alpha=h["alpha"], lamb=h["lamb"],
                            momentum=h["momentum"], wd=h["weight_decay"])
    got, _ = run(s, model, grads)
    assert_hist(got, want)


def test_grokfast_first_ema_is_a_clone_of_the_first_gradient():
    """With momentum and decay off: step 0 moves by lr (1 + lambda) g0; step 1 by
    lr (g1 + lambda (a g0 + (1-a) g1)). An aliased EMA would give a different step 1."""
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    s = dalsopt.make("grokfast", [p], total_steps=2, lr=1.0, momentum=0.0, weight_decay=0.0, alpha=0.5, lamb=2.0)
    g0 = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    g1 = torch.tensor([0.0, 1.0, 1.0, 3.0], dtype=F64)
    p.grad = g0.clone()
    s.step()
    torch.testing.assert_close(p.detach(), -3.0 * g0, rtol=0, atol=1e-15)
    assert torch.equal(p.grad, g0)  # the user's gradient is not written into
    p.grad = g1.clone()
    s.step()
    torch.testing.assert_close(p.detach(), -3.0 * g0 - (g1 + 2.0 * (0.5 * g0 + 0.5 * g1)), rtol=0, atol=1e-15)


def test_grokfast_ema_is_per_tensor_when_a_gradient_arrives_late():
    T = 6
    model = mlp4()
    grads = make_grads(model, T)
    grads[0][0] = None  # w0 (first tensor of block 0) has no gradient on step 0; b0 has one
    s = dalsopt.make("grokfast", model, total_steps=T)
    want = ref.grokfast_sgd(initial(model), grads, [[0.03] * 8] * T, alpha=0.98, lamb=2.0, momentum=0.9, wd=5e-4)
    got, _ = run(s, model, grads)
    assert_hist(got, want)


@pytest.mark.parametrize("double_decay", [False, True])
def test_stlr_discriminative_per_group_rate_at_every_step(double_decay):
    T = 50  # cut = 5
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("stlr-discriminative", model, total_steps=T, double_decay=double_decay)
    power = 2 if double_decay else 1
    group = [[0.05 * ref.discriminative_factor(l, 4, 2.6) ** power * ref.slanted_triangular(t, T) for l in range(4)]
             for t in range(T)]
    want = ref.sgd(initial(model), grads, per_tensor(group), momentum=0.9, wd=5e-4)
    got, lrs = run(s, model, grads)
    assert_lrs(lrs, group)
    assert lrs[5][3] == pytest.approx(0.05) and lrs[0][3] == pytest.approx(0.05 / 32)
    assert lrs[5][0] == pytest.approx(0.05 * 2.6 ** (-3 * power))
    assert_hist(got, want)


@pytest.mark.parametrize("epochs, spe", [(10, 7), (3, 5), (4, 3)])
def test_stlr_authors_rate_of_every_block_is_the_authors_per_epoch_sequence(epochs, spe):
    """stlr-discriminative@authors: double decay, the rate held per epoch as the authors' loop steps it."""
    T = epochs * spe
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("stlr-discriminative@authors", model, total_steps=T, steps_per_epoch=spe)
    group = []
    for t in range(T):
        m = ref.authors_stlr(t // spe, spe, epochs)
        f = [ref.discriminative_factor(b, 4, 2.6) for b in range(4)]
        group.append([0.05 * fb * (1.0 if m is None else fb * m) for fb in f])  # 2.6^-k, then eta_max s
    want = ref.sgd(initial(model), grads, per_tensor(group), momentum=0.9, wd=5e-4)
    got, lrs = run(s, model, grads)
    assert_lrs(lrs, group)
    for e in range(epochs):  # one rate per block and epoch
        assert all(lrs[t] == lrs[e * spe] for t in range(e * spe, (e + 1) * spe))
    assert lrs[0] == pytest.approx([0.05 / 2.6**3, 0.05 / 2.6**2, 0.05 / 2.6, 0.05])  # epoch 0: once decayed
    assert_hist(got, want)


def test_stlr_authors_spot_values():
    """Written out: 10 x 7 peaks at epoch 1 (cut = 7 steps) and falls by 1/9 per epoch; 3 x 5 has
    cut = 1 step (floor(1.5)) inside epoch 0, so epoch 1 is already on the decay and epoch 2 at the floor."""
    top = lambda e, epochs, spe: ref.authors_stlr(e, spe, epochs)  # noqa: E731
    assert [top(e, 10, 7) for e in (1, 2, 9)] == pytest.approx([1.0, (1 + 31 * 8 / 9) / 32, (1 + 31 / 9) / 32])
    assert [top(e, 3, 5) for e in (1, 2)] == pytest.approx([(1 + 31 * 5 / 9) / 32, 1 / 32])
    model = mlp4()
    s = dalsopt.make("stlr-discriminative@authors", model, total_steps=15, steps_per_epoch=5)
    _, lrs = run(s, model, make_grads(model, 15))
    assert lrs[4][3] == 0.05 and lrs[5][3] == pytest.approx(0.05 * (1 + 31 * 5 / 9) / 32)
    assert lrs[9][0] == pytest.approx(0.05 * 2.6 ** -6 * (1 + 31 * 5 / 9) / 32)
    assert lrs[10] == pytest.approx([0.05 * 2.6 ** (-2 * k) / 32 for k in (3, 2, 1, 0)])


def test_stlr_discriminative_itself_still_steps_per_step_whatever_steps_per_epoch():
    T, spe = 50, 7
    model_a, model_b = mlp4(), mlp4()
    grads = make_grads(model_a, T)
    got_a, seen_a = run(dalsopt.make("stlr-discriminative", model_a, total_steps=T), model_a, grads)
    got, seen = run(dalsopt.make("stlr-discriminative", model_b, total_steps=T, steps_per_epoch=spe), model_b, grads)
    assert seen == seen_a
    assert_hist(got, got_a, rtol=0, atol=0)
    want = [[0.05 * ref.discriminative_factor(l, 4, 2.6) * ref.slanted_triangular(t, T) for l in range(4)]
            for t in range(T)]
    assert_lrs(seen, want)
    assert seen[1] != seen[2]  # changes within the first epoch


def _sam_problem(seed=0, steps=8):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(16, 4, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(steps)]
    return model, data


def _functional_loss(x, y):
    return lambda w: F.cross_entropy(F.linear(torch.tanh(F.linear(x, w[0], w[1])), w[2], w[3]), y)


@pytest.mark.parametrize("name", ["sam", "sam-discriminative"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_sam_two_passes_match_reference(name, adaptive):
    T = 8
    model, data = _sam_problem(steps=T)
    p0 = initial(model)
    s = dalsopt.make(name, model, total_steps=T, adaptive=adaptive)
    h = spec(name, adaptive=adaptive)
    group = [h["lr"]] * 2 if name == "sam" else [h["lr"] / 2.6, h["lr"]]
    calls = []
    got = []
    for x, y in data:
        def closure():
            calls.append(1)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        s.zero_grad()
        loss = closure()
        s.step(loss=loss.detach(), closure=closure)
        got.append(initial(model))
    assert len(calls) == 2 * T  # two forward/backward passes per step
    assert s.lrs == pytest.approx(group)
    want = ref.sam_sgd(p0, [_functional_loss(x, y) for x, y in data], per_tensor([group] * T, [0, 0, 1, 1]),
                       rho=h["rho"], adaptive=adaptive, momentum=h["momentum"], wd=h["weight_decay"])
    assert_hist(got, want)
    # the perturbation matters: SAM is not SGD on the first-pass gradient (rho = 0)
    plain = ref.sam_sgd(p0, [_functional_loss(x, y) for x, y in data[:1]], per_tensor([group], [0, 0, 1, 1]),
                        rho=0.0, adaptive=adaptive, momentum=h["momentum"], wd=h["weight_decay"])
    assert not torch.allclose(got[0][0], plain[0][0], rtol=1e-10, atol=0)


def test_lookahead_adamw_is_torch_adamw_plus_slow_weights():
    T, k, alpha = 17, 5, 0.5
    model = mlp4()
    grads = make_grads(model, T)
    s = dalsopt.make("lookahead-adamw", model, total_steps=T)
    twin = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    opt = torch.optim.AdamW(twin, lr=3e-4, weight_decay=0.01)
    slow = [p.detach().clone() for p in twin]  # slow weights start at the initial weights
    want = []
    for n, row in enumerate(grads, start=1):
        for p, g in zip(twin, row):
            p.grad = g.clone()
        opt.step()
        if n % k == 0:
            slow = ref.lookahead_rule(slow, [p.detach() for p in twin], alpha)
            with torch.no_grad():
                for p, w in zip(twin, slow):
                    p.copy_(w)
        want.append([p.detach().clone() for p in twin])
    got, _ = run(s, model, grads)
    assert_hist(got, want)
    # the sync happened: right after step 5 the weights differ from AdamW alone
    assert not torch.allclose(got[4][0], want[3][0])


# ----------------------------------------------------------------------------------------------------
# DALS, DALS-Fast, DALS-Acc
# ----------------------------------------------------------------------------------------------------

# loss relative to the current loss EMA E: 0.5 E -> delta 0.025 (fast), 0.9 E -> 0.005 (slow),
# 0.97 E -> 0.0015 (plateau for DALS, slow for DALS-Acc's 0.001), 1.02 E -> -0.001 (plateau)
RATIO = {"fast": 0.5, "slow": 0.9, "mid": 0.97, "flat": 1.02}


def design_losses(pattern, start=4.0):
    losses, ema = [start], start
    for kind in pattern:
        loss = ema * RATIO[kind]
        losses.append(loss)
        ema = 0.95 * ema + 0.05 * loss
    return losses


T_DALS = 40
PATTERN = (["fast"] * 3 + ["slow"] * 2 + ["flat"] * 2 + ["fast", "mid", "slow", "flat", "fast", "mid"]) * 3
LOSSES = design_losses(PATTERN[: T_DALS - 1])


def dals_case(name, T, hp):
    """(schedule multiplier per step, filter alphas, phase thresholds) of ``name`` per the spec."""
    if name == "dals-acc":
        return ([ref.warm_restarts(t, hp["t0"], hp["t_mult"]) for t in range(T)], ref.dals_acc_alphas(hp["alpha0"]))
    alphas = ref.dals_alphas(hp["alpha0"]) if name == "dals" else ref.dals_fast_alphas(hp["alpha0"])
    return [ref.warmup_cosine(t, T, hp["warmup_frac"] * T) for t in range(T)], alphas


def run_dals(name, hp, *, zero_bias=True, zeros=ZERO_GRADS, T=T_DALS, losses=LOSSES, fused=False):
    model = mlp4(zero_bias=zero_bias)
    grads = make_grads(model, T, zeros=zeros)
    s = dalsopt.make(name, model, total_steps=T, fused=fused, **hp)
    h = spec(name, **hp)
    sched, alphas = dals_case(name, T, h)
    phases = ref.loss_phases(losses, fast=h["phase_fast"], slow=h["phase_slow"])
    lrs = [h["lr"] * v for v in sched]
    want, ratios = ref.dals(initial(model), grads, phases, DEPTH_OF, lrs, alphas=alphas, momentum=h["momentum"],
                            wd=h["weight_decay"], gamma=h["trust_coef"], trust_min=h["trust_min"],
                            trust_max=h["trust_max"], decoupled=h["decoupled_decay"])
    params = list(model.parameters())
    got, seen_lrs, seen_phases = [], [], []
    for t, row in enumerate(grads):
        seen_lrs.append(list(s.lrs))
        s.zero_grad()
        for p, g in zip(params, row):
            p.grad = g.clone()
        s.step(loss=torch.tensor(losses[t], dtype=F64))
        seen_phases.append(int(s.optimizer.state_dict()["transforms"]["phase"]["phase"]))
        got.append([p.detach().clone() for p in params])
    return dict(got=got, want=want, lrs=seen_lrs, ref_lrs=[[v] * 4 for v in lrs], phases=phases,
                seen_phases=seen_phases, ratios=ratios, hp=h, model=model)


def _check_coverage(r, expect_phases):
    assert r["phases"] == expect_phases
    assert set(r["phases"]) == {0, 1, 2}
    flat = [x for row in r["ratios"] for x in row]
    lo, hi = r["hp"]["trust_min"], r["hp"]["trust_max"]
    assert any(x == lo for x in flat) and any(x == hi for x in flat) and any(lo < x < hi and x != 1.0 for x in flat)
    assert r["ratios"][0][ZERO_PARAM] == 1.0  # a zero parameter with a zero gradient: both norms 0


def expected_phases(slow_threshold):
    kinds = {"fast": 0, "slow": 1, "flat": 2, "mid": 1 if slow_threshold < 0.0015 else 2}
    return [2] + [kinds[k] for k in PATTERN[: T_DALS - 1]]


def test_dals_phase_detector_matches_reference_thresholds():
    assert ref.loss_phases(LOSSES) == expected_phases(0.002)
    assert ref.loss_phases(LOSSES, slow=0.001) == expected_phases(0.001)
    assert ref.loss_phases([5.0]) == [2]  # first step: delta = 0, plateau


@pytest.mark.parametrize("name", ["dals", "dals-fast", "dals-acc"])
def test_dals_family_no_momentum_matches_reference(name):
    """All three phases, the schedule, the depth blend, coupled decay, trust clamp (both ends, inside and
    the zero-norm rule); momentum 0 so that r multiplies g_hat and m alike."""
    hp = {"momentum": 0.0}
    if name == "dals":
        hp["warmup_frac"] = 0.07  # W = 2.8 steps: a float warmup
    if name == "dals-acc":
        hp["t0"] = 4  # restarts at 4, 12, 28 with t_mult 2
    r = run_dals(name, hp)
    _check_coverage(r, expected_phases(r["hp"]["phase_slow"]))
    assert r["seen_phases"] == r["phases"]
    assert_lrs(r["lrs"], r["ref_lrs"])
    assert_hist(r["got"], r["want"])


def test_dals_acc_has_no_warmup_and_dals_fine_tunes_with_a_longer_one():
    assert "warmup_frac" not in dalsopt.resolve("dals-acc")
    assert dalsopt.resolve("dals", regime="finetune")["warmup_frac"] == 0.1 > dalsopt.resolve("dals")["warmup_frac"]


def test_dals_lr_is_zero_at_step_zero_and_the_first_step_leaves_weights():
    r = run_dals("dals", {"momentum": 0.0})
    assert r["lrs"][0] == [0.0] * 4
    model0 = mlp4()
    for x, y in zip(r["got"][0], initial(model0)):
        assert torch.equal(x, y)
    assert r["lrs"][1][0] == pytest.approx(0.03 * 1 / 2.0)  # W = 0.05 * 40 = 2
    assert r["lrs"][2][0] == pytest.approx(0.03)


def test_dals_fast_phase_zero_uses_raw_gradient_and_keeps_filter():
    """By hand, one tensor at depth 0.5 (plain parameters), momentum 0, decay 0, trust pinned to 1:
    the update is g in phase 0, and the filter is exactly as if phase-0 steps had not happened."""
    p = torch.full((3,), 10.0, dtype=F64, requires_grad=True)
    s = dalsopt.make("dals-fast", [p], total_steps=100, lr=1.0, momentum=0.0, weight_decay=0.0, warmup_frac=0.0,
                     trust_min=1.0, trust_max=1.0)
    gs = [torch.tensor(v, dtype=F64) for v in ([1.0, 0.0, 2.0], [4.0, -1.0, 0.5], [0.0, 3.0, 1.0], [2.0, 2.0, -2.0])]
    losses = [4.0, 2.0, 1.0, 4.0]  # phases 2, 0, 0, 2
    assert ref.loss_phases(losses) == [2, 0, 0, 2]
    lr = [ref.warmup_cosine(t, 100, 0.0) for t in range(4)]
    a2, b = 0.7, 0.5  # phase-2 alpha min(0.9, 0.6 + 0.1); b = 0.3 + 0.4 * 0.5
    f = (1 - a2) * gs[0]
    want = p.detach() - lr[0] * (b * gs[0] + (1 - b) * f)
    want = want - lr[1] * gs[1] - lr[2] * gs[2]
    f = a2 * f + (1 - a2) * gs[3]
    want = want - lr[3] * (b * gs[3] + (1 - b) * f)
    for g, loss in zip(gs, losses):
        p.grad = g.clone()
        s.step(loss=loss)
    torch.testing.assert_close(p.detach(), want, rtol=1e-14, atol=1e-14)


def test_dals_acc_default_t0_is_an_eighth_of_the_run():
    """Not in the spec's formulas: dalsopt's t0 = 0 default means max(1, T // 8) (the authors' 10 of 80)."""
    T = 48
    s = dalsopt.make("dals-acc", mlp4(), total_steps=T)
    lrs = []
    for t in range(T):
        lrs.append(s.lrs[0])
        s.step(loss=1.0)  # no gradients: only the schedule moves
    assert lrs == pytest.approx([0.03 * ref.warm_restarts(t, 6, 2) for t in range(T)], rel=RTOL)
    assert lrs[0] == lrs[6] == lrs[18] == pytest.approx(0.03)


@pytest.mark.parametrize("name", ["dals", "dals-fast", "dals-acc"])
def test_dals_family_with_momentum_and_pinned_trust_matches_reference(name):
    """Default momentum with the trust ratio pinned (trust_min = trust_max, no zero parameter): where r is
    the same every step, 'r g_hat into m' and 'r m' agree, so this checks the momentum and everything
    else independently of the bug below."""
    hp = {"trust_min": 0.5, "trust_max": 0.5}
    if name == "dals-acc":
        hp["t0"] = 4
    r = run_dals(name, hp, zero_bias=False)
    assert r["hp"]["momentum"] in (0.9, 0.85)
    assert r["seen_phases"] == r["phases"] == expected_phases(r["hp"]["phase_slow"])
    assert all(x == 0.5 for row in r["ratios"] for x in row)
    assert_lrs(r["lrs"], r["ref_lrs"])
    assert_hist(r["got"], r["want"])


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", ["dals", "dals-fast", "dals-acc"])
def test_dals_family_full_spec_matches_reference(name, fused):
    """The spec's defaults (momentum on, trust ratio varying per step), all phases, zero-norm tensors;
    the fused step (one compiled update per tensor) as well as the foreach chain."""
    hp = {"t0": 4} if name == "dals-acc" else {}
    r = run_dals(name, hp, fused=fused)
    _check_coverage(r, expected_phases(r["hp"]["phase_slow"]))
    assert r["seen_phases"] == r["phases"]
    assert_hist(r["got"], r["want"])


@pytest.mark.parametrize("name", ["dals", "dals-fast", "dals-acc"])
def test_dals_family_with_decoupled_decay_matches_reference(name):
    """decoupled_decay=True: p <- p (1 - eta wd) first, the trust ratio measured without the decay; a
    large wd so that the decay's share of the step is visible; all phases and both clamps."""
    hp = {"decoupled_decay": True, "weight_decay": 0.3, **({"t0": 4} if name == "dals-acc" else {})}
    r = run_dals(name, hp)
    _check_coverage(r, expected_phases(r["hp"]["phase_slow"]))
    assert_hist(r["got"], r["want"])
    coupled = run_dals(name, {**hp, "decoupled_decay": False})
    assert not torch.allclose(coupled["got"][-1][0], r["got"][-1][0])


def test_decoupled_decay_is_not_fused():
    with pytest.raises(ValueError, match="with decoupled_decay=True use fused=False"):
        dalsopt.make("dals", mlp4(), total_steps=5, fused=True, decoupled_decay=True)


def test_fused_dals_without_momentum_matches_reference():
    """Momentum 0: the fused update's other compiled variant (no momentum buffer, as the chain)."""
    r = run_dals("dals", {"momentum": 0.0, "warmup_frac": 0.07}, fused=True)
    assert_hist(r["got"], r["want"])

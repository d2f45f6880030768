"""Per-strategy search spaces (`dalsopt.search_space`): one per registry row and regime, plain data that
Optuna's define-by-run API samples directly, and every point of it a valid strategy."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import dalsopt
from dalsopt.spaces import Around, Dim, resolve_space

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("scratch", "finetune")
CASES = [(n, r) for n in dalsopt.names(presets=True) for r in REGIMES]
DISTRIBUTION = {"float": optuna.distributions.FloatDistribution, "int": optuna.distributions.IntDistribution,
                "categorical": optuna.distributions.CategoricalDistribution}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("name, regime", CASES)
def test_every_strategy_has_a_space_whose_lr_range_holds_the_regime_default(name, regime):
    space = dalsopt.search_space(name, regime)
    assert list(space)[0] == "lr" and all(isinstance(d, Dim) for d in space.values())
    lr, default = space["lr"], dalsopt.entry(name).hyperparameters(regime)["lr"]
    assert lr.type == "float" and lr.log and lr.low < default < lr.high
    assert set(space) <= set(dalsopt.resolve(name, regime))


@pytest.mark.parametrize("name, regime", CASES)
def test_every_corner_of_every_space_builds(name, regime):
    """Each combination of bounds (each choice of a categorical) goes through resolve and make."""
    space = dalsopt.search_space(name, regime)
    for point in itertools.product(*(d.edges() for d in space.values())):
        hp = dict(zip(space, point))
        assert {k: dalsopt.resolve(name, regime, **hp)[k] for k in hp} == hp
        s = dalsopt.make(name, mlp(), total_steps=8, regime=regime, steps_per_epoch=4, **hp)
        assert s.meta["hyperparameters"]["lr"] == hp["lr"]


@pytest.mark.parametrize("name, regime", [(n, r) for n in dalsopt.names() for r in REGIMES])
def test_optuna_samples_the_space_define_by_run_and_every_sample_builds(name, regime):
    space = dalsopt.search_space(name, regime)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        hp = {k: getattr(trial, f"suggest_{d.type}")(k, **d.kwargs()) for k, d in space.items()}
        for k, d in space.items():
            assert DISTRIBUTION[d.type](**d.kwargs()) == trial.distributions[k]
        dalsopt.make(name, mlp(), total_steps=8, regime=regime, steps_per_epoch=4, **hp)
        study.tell(trial, 0.0)


def test_the_spaces_follow_the_regime_and_hold_the_tuned_presets():
    assert dalsopt.search_space("sgd", "scratch")["lr"] == Dim.real(1e-3, 0.1, log=True)
    assert dalsopt.search_space("sgd", "finetune")["lr"] == Dim.real(5e-5, 5e-3, log=True)
    assert dalsopt.search_space("adamw", "scratch")["lr"] == Dim.real(3e-5, 3e-3, log=True)
    assert dalsopt.search_space("sgd", "finetune")["weight_decay"] == Dim.real(1e-3, 0.1, log=True)
    assert dalsopt.search_space("dals", "finetune")["lr"].high == 0.5  # the tuned dals@finetune runs at 0.186
    assert dalsopt.search_space("dals", "finetune")["decoupled_decay"] == Dim.choice(False, True)
    assert "decoupled_decay" not in dalsopt.search_space("dals", "scratch")
    assert set(dalsopt.search_space("sam")) == {"lr", "momentum", "weight_decay", "rho"}
    assert set(dalsopt.search_space("lookahead-adamw")) == {"lr", "weight_decay", "k", "alpha"}
    assert set(dalsopt.search_space("grokfast")) == {"lr", "momentum", "weight_decay", "alpha", "lamb"}
    assert {"t0", "t_mult"} <= set(dalsopt.search_space("sgdr"))
    assert "trust_coef" in dalsopt.search_space("lars") and "trust_coef" in dalsopt.search_space("dals")
    for name, regime in (("dals@scratch", "scratch"), ("dals@finetune", "finetune"),
                         ("dals@finetune-decoupled", "finetune"), ("dals@finetune-long", "finetune")):
        shipped = dalsopt.resolve(name, regime)
        for k, d in dalsopt.search_space(name, regime).items():
            assert shipped[k] in d.choices if d.type == "categorical" else d.low <= shipped[k] <= d.high, (name, k)


@pytest.mark.parametrize("make_it, message", [
    (lambda: Dim.real(1.0, 0.5), "needs low <= high"),
    (lambda: Dim.real(0.0, 1.0, log=True), "a log scale needs low > 0"),
    (lambda: Dim("categorical"), "takes a non-empty `choices` only"),
    (lambda: Dim.integer(1, 2.5), "needs whole bounds"),
    (lambda: Dim("normal", 0.0, 1.0), "type must be float, int or categorical"),
    (lambda: resolve_space("sgd", {"rho": Around()}, dalsopt.resolve("sgd")), "'rho': not a hyperparameter of 'sgd'"),
    (lambda: resolve_space("adam", {"weight_decay": Around()}, dalsopt.resolve("adam")), "needs a positive number"),
    (lambda: dalsopt.search_space("dals", "pretrain"), "unknown regime 'pretrain'"),
    (lambda: dalsopt.search_space("dalz"), "unknown strategy 'dalz'"),
])
def test_bad_spaces_are_one_line_errors(make_it, message):
    with pytest.raises(ValueError) as info:
        make_it()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_around_an_int_default_is_whole():
    assert Around(2, 2).dim(5, "k") == Dim.integer(2, 10, log=True)


def test_dalsopt_imports_no_sampler():
    for path in (ROOT / "dalsopt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("optuna", "ray") for n in names), path

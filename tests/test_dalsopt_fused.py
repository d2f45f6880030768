"""``fused=True`` (issue 16): the DALS step as one compiled update per tensor, interchangeable with the
foreach chain (its float64 match with the reference is in test_reference.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dalsopt
from dalsopt import fused as fused_module

F64 = torch.float64


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                         nn.Linear(12, 3)).double()


def data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(24)]


def train(s: dalsopt.Strategy, model: nn.Module, batches) -> None:
    for x, y in batches:
        s.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        s.step(loss=loss.detach())


def run(name: str, fused: bool, **hp):
    model = mlp()
    s = dalsopt.make(name, model, total_steps=24, fused=fused, **hp)
    return model, s


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hp", [{}, {"exclude_norm_bias": True}], ids=["default", "exclude_norm_bias"])
@pytest.mark.parametrize("name", ["dals", "dals-fast"])
def test_fused_matches_the_foreach_chain(name, hp):
    batches = data()
    (ma, a), (mb, b) = run(name, False, **hp), run(name, True, **hp)
    train(a, ma, batches)
    train(b, mb, batches)
    assert b.meta["fused"] and not a.meta["fused"]
    assert_close(params(mb), params(ma))
    phase_a, phase_b = (s.optimizer.state_dict()["transforms"]["phase"] for s in (a, b))
    assert all(torch.equal(phase_a[k], phase_b[k]) for k in phase_a)


@pytest.mark.parametrize("first, then", [(False, True), (True, False)], ids=["foreach->fused", "fused->foreach"])
def test_a_checkpoint_moves_between_fused_and_foreach(first, then):
    batches = data()
    m_ref, ref = run("dals", False)
    train(ref, m_ref, batches)

    m1, s1 = run("dals", first)
    train(s1, m1, batches[:10])
    saved_model, saved = copy.deepcopy(m1.state_dict()), copy.deepcopy(s1.state_dict())
    m2, s2 = run("dals", then)
    m2.load_state_dict(saved_model)
    s2.load_state_dict(saved)
    train(s2, m2, batches[10:])
    assert_close(params(m2), params(m_ref))
    layout = [{k: (v.shape, v.dtype) for k, v in st.items()} for st in saved["optimizer"]["state"].values()]
    after = [{k: (v.shape, v.dtype) for k, v in st.items()} for st in s2.state_dict()["optimizer"]["state"].values()]
    assert layout == after and set(layout[0]) == {"depth_filter.ema", "momentum.buffer"}


def test_fused_resume_is_bit_exact():
    batches = data()
    ma, a = run("dals-acc", True, t0=5)
    train(a, ma, batches)
    mb, b = run("dals-acc", True, t0=5)
    train(b, mb, batches[:9])
    saved_model, saved = copy.deepcopy(mb.state_dict()), copy.deepcopy(b.state_dict())
    mc, c = run("dals-acc", True, t0=5)
    mc.load_state_dict(saved_model)
    c.load_state_dict(saved)
    train(c, mc, batches[9:])
    assert all(torch.equal(x, y) for x, y in zip(params(ma), params(mc)))


def test_fused_is_only_offered_where_it_exists():
    with pytest.raises(ValueError, match="fused=True is available for dals, dals-fast, dals-acc, not 'adamw'"):
        dalsopt.make("adamw", mlp(), total_steps=5, fused=True)


def test_without_a_compiler_the_fused_step_runs_eagerly_with_one_warning(monkeypatch):
    def broken(fn, **kwargs):
        def fail(*args, **kw):  # what inductor raises when gcc is missing, as dynamo wraps it
            raise torch._dynamo.exc.BackendCompilerFailed(fn, RuntimeError("no C++ compiler"), None)
        return fail

    monkeypatch.setattr(fused_module, "_KERNELS", dict(fused_module._KERNELS))
    fused_module._KERNELS.pop("cpu", None)
    monkeypatch.setattr(torch, "compile", broken)
    batches = data()[:6]
    (ma, a), (mb, b) = run("dals", False), run("dals", True)
    train(a, ma, batches)
    with pytest.warns(RuntimeWarning, match="torch.compile failed on cpu") as caught:
        train(b, mb, batches)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert fused_module._KERNELS["cpu"] is fused_module.first_pass
    assert_close(params(mb), params(ma))

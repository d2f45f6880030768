"""The chain's structure: state per transform, the loss through the step context, one step signature."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dalsopt
from dalsopt.chain import Chain
from dalsopt.dals import dals_optimizer
from dalsopt.groups import blocks
from dalsopt.phase import PhaseDetector
from dalsopt.transforms import CoupledDecay, Momentum
from dalsopt.trust import TrustScaled
from dalsopt.wrappers import Lookahead

CHAINS = [n for n in dalsopt.names() if n in ("adabound", "lion", "lars", "grokfast", "dals", "dals-fast", "dals-acc")]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def one_step(s: dalsopt.Strategy, model: nn.Module, loss: float = 1.0) -> None:
    s.zero_grad()
    model(torch.ones(4, 6)).pow(2).mean().backward()
    s.step(loss=loss)


def transform_names(chain: Chain) -> set[str]:
    out = set()
    for t in chain.transforms:
        out.add(t.name)
        if hasattr(t, "inner"):
            out.add(t.inner.name)
    return out


@pytest.mark.parametrize("name", CHAINS)
def test_every_buffer_is_keyed_by_the_transform_that_owns_it(name):
    model = mlp()
    s = dalsopt.make(name, model, total_steps=10)
    for _ in range(2):
        one_step(s, model)
    assert isinstance(s.optimizer, Chain)
    names = transform_names(s.optimizer)
    keys = {k for st in s.optimizer.state.values() for k in st}
    assert keys and all(k.split(".", 1)[0] in names for k in keys), keys


def test_lion_and_adabound_no_longer_share_exp_avg():
    keys = {}
    for name in ("lion", "adabound"):
        model = mlp()
        s = dalsopt.make(name, model, total_steps=5)
        one_step(s, model)
        keys[name] = {k for st in s.optimizer.state.values() for k in st}
    assert "lion.exp_avg" in keys["lion"] and "adabound.exp_avg" in keys["adabound"]
    assert not keys["lion"] & keys["adabound"]


def test_transform_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        Chain(mlp().parameters(), [Momentum(), TrustScaled(Momentum())], lr=0.1, momentum=0.9)
    Chain(mlp().parameters(), [Momentum(), TrustScaled(Momentum(name="momentum2"))], lr=0.1, momentum=0.9)


def test_the_phase_reaches_the_filter_through_the_step_context_only():
    """No transform holds another: the detector and the filter share nothing but the step context."""
    chain = dals_optimizer(blocks(mlp()), dict(dalsopt.resolve("dals")), (0.3, 0.6, 0.7))
    detector, flt = chain.transforms[0], chain.transforms[1]
    assert isinstance(detector, PhaseDetector)
    assert all(not isinstance(v, PhaseDetector) for v in vars(flt).values())


def test_trust_scaled_measures_the_incoming_update_and_scales_the_inner_output():
    """One tensor, by hand: u = g (norm 2), p norm 5, coef 1 -> r = 2.5; momentum 0.5 over two steps:
    m1 = g1, m2 = 0.5 g1 + g2; the second step moves by r2 * m2 with r2 from ||g2|| alone."""
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    chain = Chain([p], [TrustScaled(Momentum(), 1.0, 0.0, 100.0)], lr=1.0, momentum=0.5)
    g1, g2 = torch.tensor([0.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    p.grad = g1.clone()
    chain.step()
    want = torch.tensor([3.0, 4.0], dtype=torch.float64) - 2.5 * g1
    torch.testing.assert_close(p.detach(), want, rtol=1e-15, atol=0)
    p.grad = g2.clone()
    r2 = float(torch.linalg.vector_norm(want)) / 1.0  # ||p|| / ||g2||, not / ||m2||
    chain.step()
    torch.testing.assert_close(p.detach(), want - r2 * (0.5 * g1 + g2), rtol=1e-14, atol=0)


def test_lookahead_around_a_dals_chain_passes_the_loss_on():
    model = mlp()
    chain = dals_optimizer(blocks(model), dict(dalsopt.resolve("dals")), (0.3, 0.6, 0.7))
    opt = Lookahead(chain, k=2)
    for loss in (4.0, 2.0):
        opt.zero_grad()
        model(torch.ones(4, 6)).pow(2).mean().backward()
        opt.step(loss=loss)
    assert float(chain.state_dict()["transforms"]["phase"]["ema"]) == pytest.approx(0.95 * 4.0 + 0.05 * 2.0)


@pytest.mark.parametrize("name", dalsopt.names())
def test_every_optimizer_steps_with_the_same_signature(name):
    """``step(closure=None, *, loss=None)`` on all 18 (torch's own classes included): no type checks."""
    model = mlp()
    s = dalsopt.make(name, model, total_steps=5)
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        out = model(torch.ones(4, 6)).pow(2).mean()
        out.backward()
        return out

    s.zero_grad()
    loss = closure().detach()
    s.optimizer.step(closure if s.needs_closure else None, loss=loss)
    assert s.needs_closure == name.startswith("sam")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())) or name.startswith("dals")


def test_a_checkpoint_in_the_old_key_layout_loads_renamed():
    """Before issue 12: bare buffer keys and the detector as a monitor holding Python numbers."""
    model = mlp()
    s = dalsopt.make("dals", model, total_steps=10)
    one_step(s, model, 3.0)
    new = s.optimizer.state_dict()
    detector = {k: v.item() for k, v in new["transforms"]["phase"].items() if k != "count"}
    old = {"state": {i: {"momentum_buffer": st["momentum.buffer"], "filter": st["depth_filter.ema"]}
                     for i, st in new["state"].items()},
           "param_groups": new["param_groups"], "monitors": [detector]}
    fresh = dalsopt.make("dals", mlp(), total_steps=10)
    fresh.optimizer.load_state_dict(old)
    loaded = fresh.optimizer.state_dict()
    for key, value in new["transforms"]["phase"].items():
        got = loaded["transforms"]["phase"][key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    for i, st in new["state"].items():
        assert set(loaded["state"][i]) == set(st)
        assert all(torch.equal(loaded["state"][i][k], v) for k, v in st.items())


def test_chain_state_of_a_plain_chain_is_empty_and_round_trips():
    opt = Chain(mlp().parameters(), [CoupledDecay(), Momentum()], lr=0.1, momentum=0.9, weight_decay=0.0)
    assert opt.state_dict()["transforms"] == {}
    opt.load_state_dict(opt.state_dict())

"""Mixed precision in a trial (issue 14): what a strategy sees under loss scaling, skipped steps, bf16
trials and their checkpoints, and the precision setting's errors.

Loss scaling by a power of two is exact in floating point (short of overflow), so a strategy stepping on
unscaled gradients takes bit for bit the step it takes without a scaler: the first test compares every
strategy's weights and state after three steps against a plain loop without one (torch's GradScaler runs
on the CPU too; the same test on CUDA carries the `gpu` mark and allows float32 rounding, as CUDA's
reductions need not repeat their order). A scaler whose scale overflows the loss stands in for an fp16
overflow.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dalsopt
from sweeps.spec.common import SpecError
from sweeps.spec.sweep import parse_spec
from sweeps.train.config import TrialConfig
from sweeps.train.precision import Precision, resolve
from sweeps.train.trial import Trial

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs CUDA")])]
TIMING = ("seconds", "examples_per_second")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")
    torch.set_num_threads(2)


def problem(name: str, device: str):
    """A strategy over a small seeded MLP and its loss on fixed data (the same for every call)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)).to(device)
    s = dalsopt.make(name, model, total_steps=12, steps_per_epoch=4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 10, generator=g).to(device), torch.randint(0, 3, (32,), generator=g).to(device)
    return model, s, lambda: nn.functional.cross_entropy(model(x), y)


def plain_step(s, loss_fn) -> None:
    """The loop without a scaler, as dalsopt's README writes it (the reference)."""
    def closure():
        with torch.enable_grad():
            again = loss_fn()
            again.backward()
        return again.detach()

    s.zero_grad()
    loss = loss_fn()
    loss.backward()
    s.step(loss=loss.detach(), closure=closure)


def assert_same(a, b, path="state", exact: bool = True) -> None:
    """Two state dicts equal bit for bit (tensors by value, the rest by ==); `exact=False`: tensors
    within float32 rounding (CUDA's reductions need not repeat their order from run to run)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{path}[{i}]", exact)
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a.cpu(), b.cpu()), path
        else:
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-7, msg=path)
    else:
        assert a == b, path


def snapshot(model, s) -> tuple[list[torch.Tensor], dict]:
    import copy

    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(s.state_dict())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", dalsopt.names())
def test_every_strategy_takes_the_same_step_under_a_grad_scaler(name, device):
    ref_model, ref, ref_loss = problem(name, device)
    model, s, loss_fn = problem(name, device)
    scaled = Precision("fp32", torch.device(device), torch.amp.GradScaler(device, init_scale=2.0 ** 16))
    for _ in range(3):
        plain_step(ref, ref_loss)
        scaled.step(s, loss_fn)
    assert scaled.skipped == 0 and scaled.scaler.get_scale() == 2.0 ** 16
    exact = device == "cpu"
    assert_same(list(ref_model.parameters()), list(model.parameters()), name, exact)
    assert_same(ref.state_dict(), s.state_dict(), "state", exact)


def overflowing(name: str, device: str = "cpu", second_pass_only: bool = False):
    """A strategy after two normal fp16-scaled steps, its precision at a scale that overflows the next
    loss (or, with `second_pass_only`, only SAM's second pass)."""
    model, s, loss_fn = problem(name, device)
    pr = Precision("fp32", torch.device(device), torch.amp.GradScaler(device, init_scale=2.0 ** 16))
    for _ in range(2):
        pr.step(s, loss_fn)
    calls = {"n": 0}

    def huge() -> torch.Tensor:
        calls["n"] += 1
        loss = loss_fn()
        return loss * 1e30 if calls["n"] == 2 or not second_pass_only else loss

    pr.scaler.update(new_scale=2.0 ** 100)  # 1e30 x 2**100 (or the loss x 2**100 x 1e30) overflows
    huge.finite = loss_fn
    return model, s, pr, huge


@pytest.mark.parametrize("name", dalsopt.names())
def test_a_step_with_an_inf_gradient_moves_nothing(name):
    """Weights, optimizer state (momentum, Adam moments, DALS's loss EMA, phase and count) and the
    schedule stay as they were; the scale backs off; the next finite step steps."""
    model, s, pr, huge = overflowing(name)
    before, state = snapshot(model, s)
    lr_before = [g["lr"] for g in s.optimizer.param_groups]
    pr.step(s, huge)
    assert pr.skipped == 1 and pr.scaler.get_scale() == 2.0 ** 99
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    assert_same(state, s.state_dict())
    assert [g["lr"] for g in s.optimizer.param_groups] == lr_before


@pytest.mark.parametrize("name", ["sam", "sam-discriminative"])
def test_sams_second_pass_overflowing_skips_the_step(name):
    model, s, pr, huge = overflowing(name, second_pass_only=True)
    before, state = snapshot(model, s)
    pr.step(s, huge)
    assert pr.skipped == 1
    for p, q in zip(before, model.parameters()):  # back at w: (w + e) - e, as every SAM step
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert_same(state, s.state_dict())  # no perturbation left in SAM's state, no step, no schedule


def test_dals_phase_detector_never_sees_a_skipped_step():
    model, s, pr, huge = overflowing("dals")
    phase = s.optimizer.state_dict()["transforms"]["phase"]
    assert int(phase["count"]) == 2
    pr.step(s, huge)
    assert_same(phase, s.optimizer.state_dict()["transforms"]["phase"])
    pr.scaler.update(new_scale=2.0 ** 16)
    pr.step(s, huge.finite)  # a finite step reaches it again
    assert int(s.optimizer.state_dict()["transforms"]["phase"]["count"]) == 3


# --- trials -------------------------------------------------------------------------------------------

def synthetic(**overrides) -> TrialConfig:
    return TrialConfig.create(**{"dataset": "synthetic", "strategy": "adamw", "epochs": 3, "max_train": 256,
                                 "max_eval": 256, "batch_size": 32, "hp": {"lr": 1e-2}, **overrides})


def curve(trial: Trial) -> list[dict]:
    out = []
    while not trial.done:
        out.append({k: v for k, v in trial.run_epoch().items() if k not in TIMING})
    return out


def test_a_bf16_trial_learns_and_runs_the_same_twice():
    a, b = curve(Trial(synthetic(precision="bf16"))), curve(Trial(synthetic(precision="bf16")))
    assert a == b
    assert a[-1]["precision"] == "bf16" and a[-1]["eval_accuracy"] > 0.85  # 10 classes: chance 0.1
    assert a[-1]["train_loss"] < a[0]["train_loss"]
    fp32 = curve(Trial(synthetic(precision="fp32")))
    assert fp32[-1]["train_loss"] != a[-1]["train_loss"]  # autocast did run in bf16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_resumed_trial_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, precision):
    cfg = synthetic(precision=precision, strategy="sam")
    whole = Trial(cfg)
    curve(whole)
    first = Trial(cfg)
    first.run_epoch()
    first.save(tmp_path)
    if precision == "fp16":  # the scaler's state travels with the checkpoint
        state = torch.load(tmp_path / "trial.pt", weights_only=True)["precision"]
        assert state["scaler"]["scale"] == first.precision.scaler.get_scale()
    second = Trial(cfg)
    second.restore(tmp_path)
    curve(second)
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in second.history] == \
           [{k: v for k, v in m.items() if k not in TIMING} for m in whole.history]
    for p, q in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(p, q)
    if precision == "fp16":
        assert {"skipped_steps", "loss_scale"} <= set(whole.history[-1])


def test_minilm_fine_tunes_in_bf16_on_the_cpu():
    cfg = TrialConfig.create(dataset="trec6", strategy="adamw", epochs=1, max_train=32, max_eval=32,
                             max_length=16, batch_size=16, precision="bf16")
    m = Trial(cfg).run_epoch()
    assert m["precision"] == "bf16" and 0 <= m["eval_accuracy"] <= 1 and m["train_loss"] == m["train_loss"]


def test_the_default_is_fp32_off_cuda_and_bf16_for_fine_tuning_on_it():
    cpu = torch.device("cpu")
    assert resolve(None, "finetune", cpu) == resolve(None, "scratch", cpu) == "fp32"
    assert resolve("fp16", "scratch", cpu) == "fp16"
    assert Trial(synthetic(epochs=1)).run_epoch()["precision"] == "fp32"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        assert resolve(None, "finetune", torch.device("cuda")) == "bf16"
        assert resolve(None, "scratch", torch.device("cuda")) == "fp32"


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["fp8", "FP16", 16, True])
def test_a_bad_precision_is_one_line_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, fp16 .*got") as e:
        TrialConfig.create(dataset="synthetic", precision=value)
    assert "\n" not in str(e.value)


def test_a_bad_precision_in_a_spec_names_the_file_the_section_and_the_key():
    spec = {"name": "p", "grid": {"strategies": ["adamw"], "datasets": ["synthetic", "trec6"], "seeds": 1},
            "datasets": {"trec6": {"precision": "half"}}}
    with pytest.raises(SpecError) as e:
        parse_spec(spec, "spec.yaml")
    line = str(e.value)
    assert line.startswith("spec.yaml: datasets.trec6 (trial adamw/trec6/0): precision must be one of")
    assert "\n" not in line
    with pytest.raises(SpecError, match="compile must be true or false"):
        parse_spec({**spec, "datasets": {"trec6": {"compile": "yes"}}}, "spec.yaml")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_fp16_trial_on_cuda_reports_its_scaler_and_memory():
    m = Trial(synthetic(precision="fp16", device="cuda", epochs=1)).run_epoch()
    assert m["precision"] == "fp16" and m["loss_scale"] > 0 and m["gpu_mem_peak_gb"] > 0


# --- where the trial runs ---------------------------------------------------------------------------------

def test_a_compiled_trial_trains_and_checkpoints_the_models_own_weights(tmp_path):
    """`compile: true`: the forward goes through torch.compile; the checkpoint holds the model's own
    state_dict (no `_orig_mod.` prefixes), so it loads into an uncompiled trial."""
    trial = Trial(synthetic(epochs=2, compile=True))
    assert trial.forward is not trial.model
    assert curve(trial)[-1]["eval_accuracy"] > 0.8
    trial.save(tmp_path)
    saved = torch.load(tmp_path / "trial.pt", weights_only=True)["model"]
    assert set(saved) == set(Trial(synthetic(epochs=1)).model.state_dict())


@pytest.mark.parametrize("device", DEVICES)
def test_batches_move_through_pinned_memory_only_on_cuda(device):
    from sweeps.train import device as devices

    t = torch.arange(6)
    moved = devices.to_device(t, torch.device(device))
    assert moved.device.type == device and torch.equal(moved.cpu(), t)
    if device == "cpu":
        assert moved is t  # nothing copied
    assert devices.epoch_metrics(torch.device(device)).keys() == ({"gpu_mem_peak_gb"} if device == "cuda" else set())

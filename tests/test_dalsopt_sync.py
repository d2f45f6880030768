"""No strategy's step makes the host wait for the device (issue 14).

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising call (``.item()``,
``bool(tensor)``, a device-to-host copy, ``nonzero``) into an error; those tests carry the ``gpu`` mark and
skip without CUDA. On any machine, the same steps run on the ``meta`` device, whose tensors have no
values at all: any host read of a device value raises there, so it stands in for the sync check on CPU.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dalsopt
from dalsopt import fused

CUDA = torch.cuda.is_available()
# every strategy, and the fused DALS step (compiled on CUDA; on meta its same maths run eagerly)
CASES = [pytest.param(name, {}, id=name) for name in dalsopt.names()] + [
    pytest.param(name, {"fused": True}, id=f"{name}-fused") for name in ("dals", "dals-fast", "dals-acc")]


def mlp(device: str) -> nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        return nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                             nn.Linear(16, 3))


def stepper(name: str, device: str, **kwargs):
    """A strategy on ``device`` and a function doing one training step with a device-tensor loss."""
    model = mlp(device)
    s = dalsopt.make(name, model, total_steps=20, **kwargs)
    x = torch.randn(32, 10, device=device)

    def closure() -> torch.Tensor:
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss.detach()

    def step() -> None:
        s.zero_grad()
        s.step(loss=closure(), closure=closure)

    return s, step


@pytest.mark.parametrize("name, options", CASES)
def test_no_step_reads_a_device_value_on_the_host(name, options):
    s, step = stepper(name, "meta", **options)
    for _ in range(4):  # the first steps allocate the lazy state: they must not read values either
        step()
    assert all(p.device.type == "meta" for p in s.optimizer.param_groups[0]["params"])


def test_the_meta_check_catches_a_host_read():
    """The stand-in works: a ``.item()`` in a step (what the phase detector used to do) fails on meta."""
    s, step = stepper("dals", "meta")
    original = s.optimizer.step

    def reading_step(closure=None, *, loss=None):
        float(loss)
        return original(closure, loss=loss)

    s.optimizer.step = reading_step
    with pytest.raises((RuntimeError, NotImplementedError)):
        step()


def test_the_phase_detector_keeps_its_state_on_the_parameters_device():
    s, step = stepper("dals", "meta")
    step()
    state = s.optimizer.state_dict()["transforms"]["phase"]
    assert {k: v.device.type for k, v in state.items()} == dict.fromkeys(("ema", "delta", "phase", "count"), "meta")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name, options", CASES)
def test_no_step_synchronises_on_cuda(name, options):
    s, step = stepper(name, "cuda", **options)
    step()  # warm-up outside the check (torch's own lazy initialisation; the fused step compiles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in s.optimizer.param_groups[0]["params"])
    if options.get("fused"):  # compiled with Triton, not fallen back to the eager update
        assert fused._KERNELS["cuda"] is not fused.first_pass

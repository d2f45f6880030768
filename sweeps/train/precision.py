"""A trial's numeric precision: fp32, bf16 or fp16 autocast, and fp16's loss scaling done so that
every strategy sees the gradients it would see in fp32.

Why not `GradScaler.step`: it refuses closures (SAM's second pass needs one), and it would hand the
strategy the step with nothing said about a skipped one. Here the loss is scaled, the gradients are
unscaled (`GradScaler.unscale_`) *before* the strategy's step, so DALS's and LARS's trust ratios,
SAM's perturbation, AdaBound's bounds and the Grokfast filter read true gradient norms; a step
whose gradients hold an inf or NaN is skipped whole: no parameter, optimizer state, DALS phase or
schedule moves (`Strategy.step` is never called), and the scale backs off (`GradScaler.update`).
SAM's second pass runs under the same scaler: its gradients are unscaled the same way, and an
overflow there skips the step too (the closure raises `SkippedStep`; SAM restores its weights).

Deciding to skip reads the overflow flag on the host: fp16 costs one host sync per step, as
`GradScaler.step` does; fp32 and bf16 add none.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any, Callable

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SkippedStep(Exception):
    """SAM's second pass overflowed under fp16: the step is skipped (raised from the closure)."""


def check(value: Any) -> str | None:
    """A `precision` setting: None (the default, chosen where the trial runs) or one of PRECISIONS."""
    if value is None or value in PRECISIONS:
        return value
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (unset: bf16 when fine-tuning "
                     f"on a CUDA device with bf16, else fp32), got {value!r}")


def bf16_device(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (CUDA: Ampere or later; never emulated)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve(requested: str | None, regime: str, device: torch.device) -> str:
    """The one place the default is decided: bf16 for fine-tuning on a CUDA device that has it,
    fp32 otherwise. An explicit choice is kept, unless the device cannot run it."""
    if requested is None:
        return "bf16" if regime == "finetune" and bf16_device(device) else "fp32"
    if requested == "bf16" and device.type == "cuda" and not bf16_device(device):
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no native bf16; "
                         "use fp16 or fp32")
    return requested


def gradients_of(optimizer: torch.optim.Optimizer) -> Any:
    """A stand-in optimizer over the same parameters, for `GradScaler.unscale_` of a second
    backward pass (the scaler allows one unscale per optimizer between updates)."""
    return types.SimpleNamespace(param_groups=optimizer.param_groups)


def found_inf(scaler: torch.amp.GradScaler, optimizer: Any) -> bool:
    """Whether the last `unscale_(optimizer)` met an inf or NaN (one host sync). The flags are the
    scaler's own (`_found_inf_per_device`, what `GradScaler.step` reads)."""
    return bool(sum(float(v) for v in scaler._found_inf_per_device(optimizer).values()))


class Precision:
    """Autocast and, for fp16, the loss scaler of one trial on one device."""

    def __init__(self, name: str, device: torch.device, scaler: torch.amp.GradScaler | None = None):
        """`name`'s autocast on `device`; `scaler` scales the loss (fp16's; any precision takes one)."""
        self.name, self.device, self.scaler = name, device, scaler
        self.dtype = DTYPES.get(name)
        self.skipped = 0  # steps skipped for an overflow, over the trial

    @classmethod
    def create(cls, requested: str | None, regime: str, device: torch.device) -> Precision:
        """The trial's precision (`resolve`), fp16 with torch's default scaler (initial scale 2**16)."""
        name = resolve(requested, regime, device)
        return cls(name, device, torch.amp.GradScaler(device.type) if name == "fp16" else None)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward and loss in the trial's dtype (fp32: nothing changes)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, strategy: Any, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One training step: zero the gradients, forward and backward (`loss_fn` computes the loss;
        it runs again for SAM's second pass), the strategy's step with unscaled gradients, or none
        if they overflowed. Returns the (unscaled) loss, detached."""
        strategy.zero_grad()
        with self.autocast():
            loss = loss_fn()
        if self.scaler is None:
            loss.backward()
            loss = loss.detach()
            strategy.step(loss=loss, closure=self._closure(loss_fn))
            return loss
        self.scaler.scale(loss).backward()
        loss = loss.detach()
        self.scaler.unscale_(strategy.optimizer)
        try:
            if found_inf(self.scaler, strategy.optimizer):
                raise SkippedStep
            strategy.step(loss=loss, closure=self._closure(loss_fn, strategy.optimizer))
        except SkippedStep:
            self.skipped += 1
        self.scaler.update()
        return loss

    def _closure(self, loss_fn: Callable[[], torch.Tensor],
                 optimizer: torch.optim.Optimizer | None = None) -> Callable[[], torch.Tensor]:
        """SAM's second pass: forward under autocast, backward (scaled and unscaled under fp16)."""
        def closure() -> torch.Tensor:
            with torch.enable_grad(), self.autocast():
                again = loss_fn()
            if self.scaler is None:
                again.backward()
                return again.detach()
            self.scaler.scale(again).backward()
            grads = gradients_of(optimizer)
            self.scaler.unscale_(grads)
            if found_inf(self.scaler, grads):
                raise SkippedStep
            return again.detach()
        return closure

    def metrics(self) -> dict[str, Any]:
        """What an epoch reports of it: the precision; under fp16 the skipped steps and the scale."""
        out: dict[str, Any] = {"precision": self.name}
        if self.scaler is not None:
            out.update(skipped_steps=self.skipped, loss_scale=self.scaler.get_scale())
        return out

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (scale, growth tracker) and the skipped count; empty without fp16."""
        if self.scaler is None:
            return {}
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state["scaler"])
            self.skipped = int(state["skipped"])


"""Where a trial runs and what that asks of it: host-to-device copies, TF32, torch.compile, GPU memory.

On CUDA a batch is copied from pinned (page-locked) host memory with ``non_blocking=True``, so the copy
overlaps the previous step's kernels; from pageable memory ``non_blocking`` would buy nothing, so on
other devices tensors move plainly (on the CPU they do not move at all). Matmuls run in TF32 on CUDA
(cuDNN convolutions already do by default). Each epoch reports its peak GPU memory on CUDA.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def choose(name: str | None) -> torch.device:
    """`name`, or CUDA when there is one; CUDA asked for where there is none is a one-line error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def prepare(device: torch.device) -> None:
    """Process-wide settings for a trial on `device`: TF32 matmuls on CUDA."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: through pinned memory, asynchronously, on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """The module the trial calls: `torch.compile(model)` when asked (its parameters and
    `state_dict` stay the model's own), else the model."""
    return torch.compile(model) if enabled else model


def start_epoch(device: torch.device) -> None:
    """Peak memory counts from here (per epoch)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def epoch_metrics(device: torch.device) -> dict[str, Any]:
    """The epoch's peak GPU memory in GB (allocated by tensors; CUDA only)."""
    if device.type != "cuda":
        return {}
    return {"gpu_mem_peak_gb": torch.cuda.max_memory_allocated(device) / 1e9}
